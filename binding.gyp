{
  "targets": [
    {
      "target_name": "vhost_vdpa",
      "sources": [
        "native/addon.cc",
        "native/errors.cc",
        "native/device.cc",
        "native/dma_memory.cc",
        "native/eventfd.cc",
        "native/netlink.cc",
        "native/vduse.cc"
      ],
      "include_dirs": ["<!(node -p \"require('node-addon-api').include_dir\")"],
      "defines": ["NAPI_VERSION=8", "NAPI_CPP_EXCEPTIONS", "NODE_ADDON_API_DISABLE_DEPRECATED"],
      "cflags!": ["-fno-exceptions"],
      "cflags_cc!": ["-fno-exceptions"],
      "cflags_cc": ["-std=c++17", "-Wall", "-Wextra", "-Werror=return-type", "-fexceptions"]
    }
  ]
}
