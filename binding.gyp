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
      # NODE_API_SWALLOW_UNTHROWABLE_EXCEPTIONS: in a Worker being terminated,
      # a call into the addon whose Node-API call fails must not abort the
      # process (node-addon-api otherwise turns "cannot throw" into a fatal
      # error or std::terminate); test/host/native-lifecycle.test.ts.
      "defines": [
        "NAPI_VERSION=8",
        "NAPI_CPP_EXCEPTIONS",
        "NODE_ADDON_API_DISABLE_DEPRECATED",
        "NODE_API_SWALLOW_UNTHROWABLE_EXCEPTIONS"
      ],
      "cflags!": ["-fno-exceptions"],
      "cflags_cc!": ["-fno-exceptions"],
      "cflags_cc": ["-std=c++17", "-Wall", "-Wextra", "-Werror=return-type", "-fexceptions"]
    }
  ]
}
