// A netlink socket: socket/bind, setsockopt, send to the kernel, and receive
// driven by uv_poll. Datagrams are handed to JavaScript as raw Buffers; every
// protocol decision (nlmsghdr, generic netlink, attributes, extack, dumps,
// sequence numbers, timeouts) is made in lib/mgmt/.
#include <linux/netlink.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstring>
#include <vector>

#include "errors.h"
#include "fd_poller.h"
#include "unique_fd.h"

namespace vdpa {

namespace {

// Datagrams read per uv_poll wake-up. A large dump arrives as many datagrams;
// capping the loop lets timers and other sockets run between batches (the
// kernel refills the queue for a dump only as we read, so nothing is lost).
constexpr int kMaxDatagramsPerWake = 32;

class NetlinkSocket : public Napi::ObjectWrap<NetlinkSocket> {
 public:
  static void Init(Napi::Env env, Napi::Object exports) {
    Napi::Function cls = DefineClass(
        env, "NetlinkSocket",
        {InstanceMethod<&NetlinkSocket::SetOption>("setOption"), InstanceMethod<&NetlinkSocket::Send>("send"),
         InstanceMethod<&NetlinkSocket::Receive>("receive"), InstanceMethod<&NetlinkSocket::Watch>("watch"),
         InstanceMethod<&NetlinkSocket::Unwatch>("unwatch"), InstanceMethod<&NetlinkSocket::SetRef>("setRef"),
         InstanceMethod<&NetlinkSocket::Close>("close"),
         InstanceMethod<&NetlinkSocket::SendAsync>("sendAsync"), InstanceAccessor<&NetlinkSocket::Fd>("fd"),
         InstanceAccessor<&NetlinkSocket::PortId>("portId")});
    exports.Set("NetlinkSocket", cls);
  }

  // new NetlinkSocket(protocol): socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC |
  // SOCK_NONBLOCK, protocol), bound to a kernel-assigned port id.
  explicit NetlinkSocket(const Napi::CallbackInfo& info) : Napi::ObjectWrap<NetlinkSocket>(info) {
    Napi::Env env = info.Env();
    if (info.Length() < 1 || !info[0].IsNumber())
      throw Napi::TypeError::New(env, "protocol must be a number");
    const int protocol = info[0].As<Napi::Number>().Int32Value();
    int fd = ::socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC | SOCK_NONBLOCK, protocol);
    if (fd < 0) ThrowErrno(env, errno, "socket(AF_NETLINK)");
    fd_ = UniqueFd(fd);

    sockaddr_nl local{};
    local.nl_family = AF_NETLINK;
    if (::bind(fd, reinterpret_cast<sockaddr*>(&local), sizeof(local)) < 0)
      ThrowErrno(env, errno, "bind(AF_NETLINK)");
    socklen_t length = sizeof(local);
    if (::getsockname(fd, reinterpret_cast<sockaddr*>(&local), &length) < 0) {
      ThrowErrno(env, errno, "getsockname(AF_NETLINK)");
    }
    port_id_ = local.nl_pid;
  }

  // Runs on the loop thread when the socket is readable: reads a capped
  // batch of datagrams and hands them to the JavaScript callback.
  void OnReadable(int status) {
    if (!fd_.Valid()) return;
    Napi::Env env = Env();  // inside FdPoller::OnPoll's HandleScope
    std::vector<Datagram> datagrams;
    int err = status < 0 ? -status : ReadBatch(&datagrams);
    if (err == 0 && datagrams.empty()) return;
    Napi::Array pair = ToJs(env, datagrams);
    Napi::Value error = err == 0 ? env.Undefined() : ErrnoError(env, err, "recvfrom(AF_NETLINK)").Value();
    // The callback may close this socket; nothing below touches `this`.
    const napi_value argv[3] = {error, pair.Get(0u), pair.Get(1u)};
    watch_.Deliver(env, 3, argv);
  }

 private:
  int CheckedFd(Napi::Env env, const char* syscall) {
    if (closing_ || !fd_.Valid()) ThrowErrno(env, EBADF, syscall);
    return fd_.Get();
  }

  // setOption(level, name, value): setsockopt with an int value
  // (e.g. SOL_NETLINK / NETLINK_EXT_ACK / 1).
  Napi::Value SetOption(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    int fd = CheckedFd(env, "setsockopt(AF_NETLINK)");
    if (info.Length() < 3 || !info[0].IsNumber() || !info[1].IsNumber() || !info[2].IsNumber()) {
      throw Napi::TypeError::New(env, "setOption(level, name, value) expects three numbers");
    }
    const int level = info[0].As<Napi::Number>().Int32Value();
    const int name = info[1].As<Napi::Number>().Int32Value();
    const int value = info[2].As<Napi::Number>().Int32Value();
    if (::setsockopt(fd, level, name, &value, sizeof(value)) < 0) {
      ThrowErrno(env, errno, "setsockopt(" + std::to_string(level) + ", " + std::to_string(name) + ")");
    }
    return env.Undefined();
  }

  // send(bytes) → bytes sent, addressed to the kernel (port 0). The kernel
  // runs the request handler inside this call, so a handler that sleeps (a
  // vdpa DEV_DEL waiting for an open char device) blocks the caller here.
  Napi::Value Send(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    int fd = CheckedFd(env, "sendto(AF_NETLINK)");
    if (info.Length() < 1 || !info[0].IsTypedArray())
      throw Napi::TypeError::New(env, "message must be a Uint8Array");
    Napi::Uint8Array bytes = info[0].As<Napi::Uint8Array>();
    sockaddr_nl kernel{};
    kernel.nl_family = AF_NETLINK;
    ssize_t n;
    do {
      n = ::sendto(fd, bytes.Data(), bytes.ByteLength(), 0, reinterpret_cast<sockaddr*>(&kernel),
                   sizeof(kernel));
    } while (n < 0 && errno == EINTR);
    if (n < 0) ThrowErrno(env, errno, "sendto(AF_NETLINK)");
    return Napi::Number::New(env, static_cast<double>(n));
  }

  struct Datagram {
    std::vector<uint8_t> bytes;
    uint32_t sender;
  };

  // Reads up to kMaxDatagramsPerWake datagrams without blocking. Returns the
  // errno of a failed recvfrom (other than EAGAIN) or 0.
  int ReadBatch(std::vector<Datagram>* out) {
    for (int i = 0; i < kMaxDatagramsPerWake; i++) {
      // MSG_PEEK | MSG_TRUNC returns the datagram's real length, so a dump
      // datagram of any size is received whole.
      ssize_t size;
      do {
        size = ::recv(fd_.Get(), nullptr, 0, MSG_PEEK | MSG_TRUNC | MSG_DONTWAIT);
      } while (size < 0 && errno == EINTR);
      if (size < 0) return errno == EAGAIN || errno == EWOULDBLOCK ? 0 : errno;
      Datagram datagram;
      datagram.bytes.resize(static_cast<size_t>(size));
      sockaddr_nl from{};
      socklen_t from_length = sizeof(from);
      ssize_t n;
      do {
        n = ::recvfrom(fd_.Get(), datagram.bytes.data(), datagram.bytes.size(), MSG_DONTWAIT,
                       reinterpret_cast<sockaddr*>(&from), &from_length);
      } while (n < 0 && errno == EINTR);
      if (n < 0) return errno == EAGAIN || errno == EWOULDBLOCK ? 0 : errno;
      datagram.bytes.resize(static_cast<size_t>(n));
      datagram.sender = from.nl_pid;
      out->push_back(std::move(datagram));
    }
    return 0;
  }

  // Builds [buffers, senders]: the datagrams and the port id each came from
  // (0 = the kernel).
  static Napi::Array ToJs(Napi::Env env, std::vector<Datagram>& datagrams) {
    Napi::Array buffers = Napi::Array::New(env, datagrams.size());
    Napi::Array senders = Napi::Array::New(env, datagrams.size());
    for (size_t i = 0; i < datagrams.size(); i++) {
      buffers.Set(i, Napi::Buffer<uint8_t>::Copy(env, datagrams[i].bytes.data(), datagrams[i].bytes.size()));
      senders.Set(i, Napi::Number::New(env, datagrams[i].sender));
    }
    Napi::Array pair = Napi::Array::New(env, 2);
    pair.Set(0u, buffers);
    pair.Set(1u, senders);
    return pair;
  }

  // receive() → [buffers, senders] read now without blocking (possibly empty).
  Napi::Value Receive(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    CheckedFd(env, "recvfrom(AF_NETLINK)");
    std::vector<Datagram> datagrams;
    int err = ReadBatch(&datagrams);
    if (err != 0 && datagrams.empty()) ThrowErrno(env, err, "recvfrom(AF_NETLINK)");
    return ToJs(env, datagrams);
  }

  // watch(callback): on every readable wake-up call callback(error, buffers,
  // senders). `error` is set (and the arrays hold what was read before it)
  // when recvfrom failed, e.g. ENOBUFS after the receive queue overflowed.
  Napi::Value Watch(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    int fd = CheckedFd(env, "uv_poll_start(AF_NETLINK)");
    watch_.Start(this, env, fd, info[0], "uv_poll_start(AF_NETLINK)");
    return env.Undefined();
  }

  Napi::Value Unwatch(const Napi::CallbackInfo& info) {
    watch_.Stop(this);
    return info.Env().Undefined();
  }

  // setRef(bool): whether a watch keeps the event loop alive.
  Napi::Value SetRef(const Napi::CallbackInfo& info) {
    watch_.SetRef(info.Length() < 1 || info[0].ToBoolean().Value());
    return info.Env().Undefined();
  }

  // sendAsync(bytes) → Promise<bytes sent>: send() on the libuv thread pool,
  // for requests whose kernel handler may sleep (DEV_DEL). The answer still
  // arrives through watch(); it is queued before sendto returns.
  Napi::Value SendAsync(const Napi::CallbackInfo& info);

  // close(): stops watching and closes the socket — at once, or after the
  // async sends still running (the socket counts as closed at once).
  Napi::Value Close(const Napi::CallbackInfo& info) {
    watch_.Stop(this);
    closing_ = true;
    if (pending_ == 0) fd_.Reset();
    return info.Env().Undefined();
  }

 public:
  // Called on the loop thread when an async send finished: performs a close
  // that waited for it.
  void AsyncSendDone() {
    if (--pending_ == 0 && closing_) fd_.Reset();
  }

 private:
  Napi::Value Fd(const Napi::CallbackInfo& info) {
    return Napi::Number::New(info.Env(), closing_ ? -1 : fd_.Get());
  }
  Napi::Value PortId(const Napi::CallbackInfo& info) { return Napi::Number::New(info.Env(), port_id_); }

  UniqueFd fd_;
  uint32_t port_id_ = 0;
  bool closing_ = false;  // close() was called; fd_ stays open for running sends
  int pending_ = 0;       // async sends running on fd_
  JsFdWatch<NetlinkSocket> watch_;
};

// Sends one datagram to the kernel on the thread pool. Holds the socket's
// JavaScript object, so the socket (and its descriptor) outlives the call.
class SendWorker : public Napi::AsyncWorker {
 public:
  SendWorker(Napi::Env env, NetlinkSocket* owner, const Napi::Object& self, int fd,
             const Napi::Uint8Array& bytes)
      : Napi::AsyncWorker(env, "vhost-vdpa:netlink-send"),
        deferred_(Napi::Promise::Deferred::New(env)),
        owner_(owner),
        self_(Napi::Persistent(self)),
        fd_(fd),
        bytes_(bytes.Data(), bytes.Data() + bytes.ByteLength()) {}

  Napi::Promise Promise() const { return deferred_.Promise(); }

  // Thread pool: no JavaScript, no V8 handles.
  void Execute() override {
    sockaddr_nl kernel{};
    kernel.nl_family = AF_NETLINK;
    ssize_t n;
    do {
      n = ::sendto(fd_, bytes_.data(), bytes_.size(), 0, reinterpret_cast<sockaddr*>(&kernel),
                   sizeof(kernel));
    } while (n < 0 && errno == EINTR);
    sent_ = n;
    err_ = n < 0 ? errno : 0;
  }

  void OnOK() override {
    Napi::Env env = Env();
    owner_->AsyncSendDone();
    if (err_ != 0) {
      deferred_.Reject(ErrnoError(env, err_, "sendto(AF_NETLINK)").Value());
      return;
    }
    deferred_.Resolve(Napi::Number::New(env, static_cast<double>(sent_)));
  }

 private:
  Napi::Promise::Deferred deferred_;
  NetlinkSocket* owner_;
  Napi::ObjectReference self_;
  int fd_;
  std::vector<uint8_t> bytes_;
  ssize_t sent_ = 0;
  int err_ = 0;
};

Napi::Value NetlinkSocket::SendAsync(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = CheckedFd(env, "sendto(AF_NETLINK)");
  if (info.Length() < 1 || !info[0].IsTypedArray())
    throw Napi::TypeError::New(env, "message must be a Uint8Array");
  auto* worker = new SendWorker(env, this, Value(), fd, info[0].As<Napi::Uint8Array>());
  pending_++;
  worker->Queue();
  return worker->Promise();
}

}  // namespace

void InitNetlink(Napi::Env env, Napi::Object exports) { NetlinkSocket::Init(env, exports); }

}  // namespace vdpa
