// SPDX-License-Identifier: MIT
//
// vdpa-net-bench: a minimal userspace virtio-net loopback driver over vhost-vdpa, the net benchmark's
// baseline. Independent of the vhost-vdpa npm package, it brings the device up the way NetDevice does
// (VERSION_1 + ACCESS_PLATFORM, split rings of the same size, memfd-backed MAP_SHARED memory mapped through
// IOTLB v2 messages; no control queue: vdpa_sim_net's CVQ plays no part in the data path) and does the same
// work per frame: the 12-byte virtio_net_hdr_v1 and the caller's frame copied into a TX buffer, one
// descriptor per frame; RX buffers of header + 1526 bytes kept posted, each received frame copied out
// (NetDevice hands out copies) and its buffer re-posted at once.
//
// The load: batches of --batch frames (broadcast, EtherType 0x88b5, a sequence number at byte 14) are put in
// the TX ring with one kick; the next batch starts once every frame of this one was taken (TX used), which
// is what `await dev.sendBatch(frames)` (or, with --batch 1, `await dev.send(frame)`) does. Completions are
// seen by blocking on the call eventfds (--mode event, like NetDevice's interrupt mode) or by spinning on
// used->idx (--mode poll). vdpa_sim_net stops TX processing when it finds no RX buffer until the next kick,
// so the RX ring is refilled (and kicked) before TX is waited for.
//
// Usage: vdpa-net-bench --device /dev/vhost-vdpa-N [--size BYTES] [--batch N] [--seconds S] [--ramp S]
//                       [--mode event|poll] [--queue-size N]
// Prints one JSON object on stdout: frames_per_s, gbit_per_s (frame bytes, no header), frames, lost, ...
// Exit status 0 on success, 1 on any failure, 2 on bad arguments.
//
// Build: gcc -O2 -Wall -Wextra -std=gnu11 -o vdpa-net-bench vdpa-net-bench.c   (or `make`)
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <linux/vhost.h>
#include <linux/vhost_types.h>
#include <poll.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#ifndef VHOST_IOTLB_BATCH_BEGIN
#define VHOST_IOTLB_BATCH_BEGIN 5
#define VHOST_IOTLB_BATCH_END 6
#endif
#ifndef VHOST_BACKEND_F_IOTLB_MSG_V2
#define VHOST_BACKEND_F_IOTLB_MSG_V2 0x1
#endif
#ifndef VHOST_BACKEND_F_IOTLB_BATCH
#define VHOST_BACKEND_F_IOTLB_BATCH 0x2
#endif

#define VIRTIO_CONFIG_S_ACKNOWLEDGE 1
#define VIRTIO_CONFIG_S_DRIVER 2
#define VIRTIO_CONFIG_S_DRIVER_OK 4
#define VIRTIO_CONFIG_S_FEATURES_OK 8
#define VIRTIO_NET_F_MTU 3
#define VIRTIO_NET_F_MAC 5
#define VIRTIO_NET_F_STATUS 16
#define VIRTIO_F_VERSION_1 32
#define VIRTIO_F_ACCESS_PLATFORM 33
#define VIRTIO_ID_NET 1

#if __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "vdpa-net-bench assumes a little-endian host (virtio 1.x rings are little-endian)"
#endif

#define RXQ 0
#define TXQ 1
#define HDR_LEN 12              // struct virtio_net_hdr_v1 (VERSION_1)
#define RX_BUF_LEN (12 + 1526)  // header + the smallest receive buffer without MRG_RXBUF (as NetDevice)
#define SLOT 1600               // bytes per buffer slot (RX and TX)
#define IOVA_BASE 0x100000ULL
#define STALL_NS (5ULL * 1000 * 1000 * 1000)

static const char* g_device = NULL;

static void die(const char* fmt, ...) __attribute__((noreturn, format(printf, 1, 2)));
static void die(const char* fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fprintf(stderr, "vdpa-net-bench: ");
  if (g_device) fprintf(stderr, "%s: ", g_device);
  vfprintf(stderr, fmt, ap);
  fputc('\n', stderr);
  va_end(ap);
  exit(1);
}

#define XIOCTL(fd, req, arg)                                                 \
  do {                                                                       \
    if (ioctl((fd), (req), (arg)) < 0) die("%s: %s", #req, strerror(errno)); \
  } while (0)

static uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

static uint64_t cpu_us(void) {
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  return (uint64_t)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1000000ULL +
         (uint64_t)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec);
}

struct options {
  const char* device;
  unsigned size, batch, queue_size;
  double seconds, ramp;
  bool poll_mode;
};

static const char USAGE[] =
    "Usage: vdpa-net-bench --device /dev/vhost-vdpa-N [options]\n"
    "  --size BYTES     frame size without virtio header, 60 … 1514 (default 64)\n"
    "  --batch N        frames per kick; the next batch waits for this one's TX completions (default 32)\n"
    "  --seconds S      measured duration (default 10)\n"
    "  --ramp S         unmeasured warm-up before it (default 0)\n"
    "  --mode event|poll  block on the call eventfds (default) or spin on used->idx\n"
    "  --queue-size N   ring size of RX and TX (default 256, capped by the device)\n"
    "Prints {frames_per_s, gbit_per_s, frames, lost, cpu_us_per_frame, ...} as JSON.\n";

static void usage_error(const char* fmt, ...) __attribute__((noreturn, format(printf, 1, 2)));
static void usage_error(const char* fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fprintf(stderr, "vdpa-net-bench: ");
  vfprintf(stderr, fmt, ap);
  fprintf(stderr, "\n\n%s", USAGE);
  va_end(ap);
  exit(2);
}

static double parse_number(const char* name, const char* s, double min, double max) {
  char* end;
  errno = 0;
  double v = strtod(s, &end);
  if (errno || end == s || *end || !(v >= min && v <= max))
    usage_error("%s: expected a number in [%g, %g], got '%s'", name, min, max, s);
  return v;
}

static struct options parse_options(int argc, char** argv) {
  struct options o = {.size = 64, .batch = 32, .queue_size = 256, .seconds = 10, .poll_mode = false};
  static const struct option longopts[] = {{"device", required_argument, 0, 'd'},
                                           {"size", required_argument, 0, 'z'},
                                           {"batch", required_argument, 0, 'b'},
                                           {"seconds", required_argument, 0, 's'},
                                           {"ramp", required_argument, 0, 'R'},
                                           {"mode", required_argument, 0, 'm'},
                                           {"queue-size", required_argument, 0, 'Q'},
                                           {"help", no_argument, 0, 'h'},
                                           {0, 0, 0, 0}};
  int c;
  opterr = 0;
  while ((c = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
    switch (c) {
      case 'd':
        o.device = optarg;
        break;
      case 'z':
        o.size = (unsigned)parse_number("--size", optarg, 60, 1514);
        break;
      case 'b':
        o.batch = (unsigned)parse_number("--batch", optarg, 1, 256);
        break;
      case 's':
        o.seconds = parse_number("--seconds", optarg, 0.001, 86400);
        break;
      case 'R':
        o.ramp = parse_number("--ramp", optarg, 0, 3600);
        break;
      case 'm':
        if (strcmp(optarg, "poll") == 0)
          o.poll_mode = true;
        else if (strcmp(optarg, "event") == 0)
          o.poll_mode = false;
        else
          usage_error("--mode: expected event or poll, got '%s'", optarg);
        break;
      case 'Q':
        o.queue_size = (unsigned)parse_number("--queue-size", optarg, 2, 32768);
        break;
      case 'h':
        fputs(USAGE, stdout);
        exit(0);
      default:
        usage_error("unknown or incomplete option '%s'", argv[optind - 1]);
    }
  }
  if (optind < argc) usage_error("unexpected argument '%s'", argv[optind]);
  if (!o.device) usage_error("--device is required");
  return o;
}

// One split virtqueue and its buffers, all inside the device's DMA region.
struct queue {
  unsigned index, size;
  int kick_fd, call_fd;
  struct vring_desc* desc;
  struct vring_avail* avail;
  struct vring_used* used;
  uint8_t* buffers;  // size × SLOT bytes; buffer i belongs to descriptor i
  uint16_t avail_idx, last_used;
};

struct device {
  int fd, mem_fd;
  uint8_t* mem;
  size_t mem_len;
  struct queue q[2];
};

static uint64_t iova_of(const struct device* d, const void* p) {
  return IOVA_BASE + (uint64_t)((const uint8_t*)p - d->mem);
}

static void set_status(struct device* d, uint8_t s) { XIOCTL(d->fd, VHOST_VDPA_SET_STATUS, &s); }

static void iotlb_write(struct device* d, uint8_t type, uint64_t iova, uint64_t size, uint64_t uaddr,
                        uint8_t perm) {
  struct vhost_msg_v2 m;
  memset(&m, 0, sizeof m);
  m.type = VHOST_IOTLB_MSG_V2;
  m.iotlb.type = type;
  m.iotlb.iova = iova;
  m.iotlb.size = size;
  m.iotlb.uaddr = uaddr;
  m.iotlb.perm = perm;
  if (write(d->fd, &m, sizeof m) != (ssize_t)sizeof m)
    die("IOTLB message type %u: %s", type, strerror(errno));
}

static size_t align_up(size_t v, size_t a) { return (v + a - 1) / a * a; }

// Lays out one queue at `*off` in the region; returns nothing, advances *off.
static void layout_queue(struct device* d, struct queue* q, unsigned index, unsigned size, size_t* off,
                         size_t page) {
  q->index = index;
  q->size = size;
  size_t desc = align_up(*off, page);
  size_t avail = desc + 16ULL * size;
  size_t used = align_up(avail + 6 + 2ULL * size, 4);
  size_t bufs = align_up(used + 6 + 8ULL * size, page);
  *off = bufs + (size_t)SLOT * size;
  // Pointers are resolved after mmap; store offsets in the pointer fields for now.
  q->desc = (struct vring_desc*)(uintptr_t)desc;
  q->avail = (struct vring_avail*)(uintptr_t)avail;
  q->used = (struct vring_used*)(uintptr_t)used;
  q->buffers = (uint8_t*)(uintptr_t)bufs;
  (void)d;
}

static void resolve_queue(struct device* d, struct queue* q) {
  q->desc = (struct vring_desc*)(d->mem + (uintptr_t)q->desc);
  q->avail = (struct vring_avail*)(d->mem + (uintptr_t)q->avail);
  q->used = (struct vring_used*)(d->mem + (uintptr_t)q->used);
  q->buffers = d->mem + (uintptr_t)q->buffers;
}

static void setup_vring(struct device* d, struct queue* q) {
  struct vhost_vring_state num = {.index = q->index, .num = q->size};
  XIOCTL(d->fd, VHOST_SET_VRING_NUM, &num);
  struct vhost_vring_state base = {.index = q->index, .num = 0};
  XIOCTL(d->fd, VHOST_SET_VRING_BASE, &base);
  struct vhost_vring_addr addr = {.index = q->index,
                                  .desc_user_addr = iova_of(d, q->desc),
                                  .avail_user_addr = iova_of(d, q->avail),
                                  .used_user_addr = iova_of(d, q->used)};
  XIOCTL(d->fd, VHOST_SET_VRING_ADDR, &addr);
  q->kick_fd = eventfd(0, EFD_CLOEXEC);
  q->call_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (q->kick_fd < 0 || q->call_fd < 0) die("eventfd: %s", strerror(errno));
  struct vhost_vring_file kick = {.index = q->index, .fd = q->kick_fd};
  XIOCTL(d->fd, VHOST_SET_VRING_KICK, &kick);
  struct vhost_vring_file call = {.index = q->index, .fd = q->call_fd};
  XIOCTL(d->fd, VHOST_SET_VRING_CALL, &call);
  struct vhost_vring_state enable = {.index = q->index, .num = 1};
  XIOCTL(d->fd, VHOST_VDPA_SET_VRING_ENABLE, &enable);
}

static void device_open(struct device* d, const struct options* o) {
  memset(d, 0, sizeof *d);
  d->fd = open(o->device, O_RDWR | O_CLOEXEC);
  if (d->fd < 0) die("cannot open: %s", strerror(errno));
  XIOCTL(d->fd, VHOST_SET_OWNER, NULL);
  uint64_t backend = 0;
  XIOCTL(d->fd, VHOST_GET_BACKEND_FEATURES, &backend);
  const uint64_t want_backend =
      (1ULL << VHOST_BACKEND_F_IOTLB_MSG_V2) | (1ULL << VHOST_BACKEND_F_IOTLB_BATCH);
  if ((backend & want_backend) != want_backend)
    die("backend features 0x%" PRIx64 " lack IOTLB_MSG_V2|IOTLB_BATCH", backend);
  XIOCTL(d->fd, VHOST_SET_BACKEND_FEATURES, &want_backend);
  uint32_t id = 0;
  XIOCTL(d->fd, VHOST_VDPA_GET_DEVICE_ID, &id);
  if (id != VIRTIO_ID_NET) die("virtio device id %u is not a net device (1)", id);

  set_status(d, 0);
  set_status(d, VIRTIO_CONFIG_S_ACKNOWLEDGE);
  set_status(d, VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER);
  uint64_t offered = 0;
  XIOCTL(d->fd, VHOST_GET_FEATURES, &offered);
  const uint64_t required = (1ULL << VIRTIO_F_VERSION_1) | (1ULL << VIRTIO_F_ACCESS_PLATFORM);
  if ((offered & required) != required)
    die("device features 0x%" PRIx64 " lack VERSION_1|ACCESS_PLATFORM", offered);
  const uint64_t optional =
      (1ULL << VIRTIO_NET_F_MTU) | (1ULL << VIRTIO_NET_F_MAC) | (1ULL << VIRTIO_NET_F_STATUS);
  uint64_t features = required | (offered & optional);
  XIOCTL(d->fd, VHOST_SET_FEATURES, &features);
  set_status(d, VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER | VIRTIO_CONFIG_S_FEATURES_OK);
  uint8_t status = 0;
  XIOCTL(d->fd, VHOST_VDPA_GET_STATUS, &status);
  if (!(status & VIRTIO_CONFIG_S_FEATURES_OK)) die("device did not accept features 0x%" PRIx64, features);

  uint16_t max_qsize = 0;
  XIOCTL(d->fd, VHOST_VDPA_GET_VRING_NUM, &max_qsize);
  unsigned qsize = o->queue_size < max_qsize ? o->queue_size : max_qsize;
  if (qsize & (qsize - 1)) die("queue size %u is not a power of two", qsize);
  if (o->batch > qsize) die("--batch %u is larger than the ring (%u)", o->batch, qsize);

  const size_t page = (size_t)sysconf(_SC_PAGESIZE);
  size_t off = 0;
  layout_queue(d, &d->q[RXQ], RXQ, qsize, &off, page);
  layout_queue(d, &d->q[TXQ], TXQ, qsize, &off, page);
  d->mem_len = align_up(off, page);
  d->mem_fd = memfd_create("vdpa-net-bench", MFD_CLOEXEC);
  if (d->mem_fd < 0) die("memfd_create: %s", strerror(errno));
  if (ftruncate(d->mem_fd, (off_t)d->mem_len) < 0) die("ftruncate: %s", strerror(errno));
  d->mem = mmap(NULL, d->mem_len, PROT_READ | PROT_WRITE, MAP_SHARED, d->mem_fd, 0);
  if (d->mem == MAP_FAILED) die("mmap: %s", strerror(errno));
  resolve_queue(d, &d->q[RXQ]);
  resolve_queue(d, &d->q[TXQ]);

  iotlb_write(d, VHOST_IOTLB_BATCH_BEGIN, 0, 0, 0, 0);
  iotlb_write(d, VHOST_IOTLB_UPDATE, IOVA_BASE, d->mem_len, (uint64_t)(uintptr_t)d->mem, VHOST_ACCESS_RW);
  iotlb_write(d, VHOST_IOTLB_BATCH_END, 0, 0, 0, 0);
  setup_vring(d, &d->q[RXQ]);
  setup_vring(d, &d->q[TXQ]);
  set_status(d, VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER | VIRTIO_CONFIG_S_FEATURES_OK |
                    VIRTIO_CONFIG_S_DRIVER_OK);
  XIOCTL(d->fd, VHOST_VDPA_GET_STATUS, &status);
  if (!(status & VIRTIO_CONFIG_S_DRIVER_OK)) die("device refused DRIVER_OK (status 0x%x)", status);
}

static void device_close(struct device* d) {
  set_status(d, 0);
  for (int i = 0; i < 2; i++) {
    close(d->q[i].kick_fd);
    close(d->q[i].call_fd);
  }
  close(d->fd);
  munmap(d->mem, d->mem_len);
  close(d->mem_fd);
}

// Publishes the queued avail entries and kicks unless the device asked not to be notified.
static void publish_and_kick(struct queue* q) {
  atomic_store_explicit((_Atomic uint16_t*)&q->avail->idx, q->avail_idx, memory_order_release);
  atomic_thread_fence(memory_order_seq_cst);
  if (atomic_load_explicit((_Atomic uint16_t*)&q->used->flags, memory_order_relaxed) & VRING_USED_F_NO_NOTIFY)
    return;
  static const uint64_t one = 1;
  if (write(q->kick_fd, &one, sizeof one) != sizeof one) die("kick eventfd write: %s", strerror(errno));
}

static uint16_t used_idx(const struct queue* q) {
  return atomic_load_explicit((_Atomic uint16_t*)&q->used->idx, memory_order_acquire);
}

struct run {
  const struct options* o;
  struct device* d;
  uint64_t sent, received, bad, tx_done;
  uint32_t seq;
  uint8_t frame[1514];           // the caller's frame: copied into a TX buffer per send, as NetDevice does
  uint8_t received_frame[1514];  // where a received frame is copied to (NetDevice hands out a copy)
};

// Drains RX completions, checks each frame's length, and re-posts the buffers (publish + kick when any).
static void reap_rx(struct run* r) {
  struct queue* q = &r->d->q[RXQ];
  uint16_t idx = used_idx(q);
  if (idx == q->last_used) return;
  while (q->last_used != idx) {
    struct vring_used_elem* e = &q->used->ring[q->last_used & (q->size - 1)];
    q->last_used++;
    if (e->len != HDR_LEN + r->o->size) {
      r->bad++;
    } else {
      // Copy the frame out (NetDevice delivers a copy) and look at it, so the copy is not optimised away.
      memcpy(r->received_frame, q->buffers + (size_t)e->id * SLOT + HDR_LEN, r->o->size);
      if (r->received_frame[12] != 0x88) r->bad++;
    }
    r->received++;
    q->avail->ring[q->avail_idx & (q->size - 1)] = (uint16_t)e->id;
    q->avail_idx++;
  }
  publish_and_kick(q);
}

static unsigned reap_tx(struct run* r) {
  struct queue* q = &r->d->q[TXQ];
  uint16_t idx = used_idx(q);
  unsigned n = (uint16_t)(idx - q->last_used);
  q->last_used = idx;
  r->tx_done += n;
  return n;
}

static void wait_event(struct run* r) {
  struct pollfd p[2] = {{.fd = r->d->q[RXQ].call_fd, .events = POLLIN},
                        {.fd = r->d->q[TXQ].call_fd, .events = POLLIN}};
  int n;
  do n = poll(p, 2, (int)(STALL_NS / 1000000));
  while (n < 0 && errno == EINTR);
  if (n < 0) die("poll(call eventfds): %s", strerror(errno));
  if (n == 0)
    die("stalled: no call eventfd signal for 5 s (sent %" PRIu64 ", received %" PRIu64 ")", r->sent,
        r->received);
  uint64_t v;
  for (int i = 0; i < 2; i++)
    if (p[i].revents & POLLIN) (void)!read(p[i].fd, &v, sizeof v);
}

// Sends one batch and waits until the device has taken all of it (TX used), reaping RX meanwhile.
static void send_batch(struct run* r) {
  struct queue* q = &r->d->q[TXQ];
  const unsigned size = r->o->size;
  for (unsigned i = 0; i < r->o->batch; i++) {
    uint16_t slot = (uint16_t)(q->avail_idx & (q->size - 1));
    uint8_t* buf = q->buffers + (size_t)slot * SLOT;
    // The caller's frame gets its sequence number; the header (all zero) and the frame go into the buffer.
    uint32_t seq = r->seq++;
    r->frame[14] = (uint8_t)(seq >> 24);
    r->frame[15] = (uint8_t)(seq >> 16);
    r->frame[16] = (uint8_t)(seq >> 8);
    r->frame[17] = (uint8_t)seq;
    memset(buf, 0, HDR_LEN);
    memcpy(buf + HDR_LEN, r->frame, size);
    q->desc[slot].len = HDR_LEN + size;
    q->avail->ring[slot] = slot;
    q->avail_idx++;
  }
  r->sent += r->o->batch;
  publish_and_kick(q);
  unsigned done = 0;
  uint64_t since = now_ns();
  while (done < r->o->batch) {
    reap_rx(r);
    unsigned n = reap_tx(r);
    done += n;
    if (done >= r->o->batch) break;
    if (n) since = now_ns();
    if (r->o->poll_mode) {
      if (now_ns() - since > STALL_NS) die("stalled: TX not completed for 5 s");
    } else {
      wait_event(r);
    }
  }
  reap_rx(r);
}

static void init_rings(struct run* r) {
  struct device* d = r->d;
  struct queue* rx = &d->q[RXQ];
  for (unsigned i = 0; i < rx->size; i++) {
    rx->desc[i] =
        (struct vring_desc){iova_of(d, rx->buffers + (size_t)i * SLOT), RX_BUF_LEN, VRING_DESC_F_WRITE, 0};
    rx->avail->ring[i] = (uint16_t)i;
  }
  rx->avail_idx = (uint16_t)rx->size;
  struct queue* tx = &d->q[TXQ];
  static const uint8_t src[6] = {0x52, 0x54, 0xaa, 0xbb, 0xcc, 0x99};
  memset(r->frame, 0xff, 6);
  memcpy(r->frame + 6, src, 6);
  r->frame[12] = 0x88;
  r->frame[13] = 0xb5;
  for (unsigned k = 18; k < r->o->size; k++) r->frame[k] = (uint8_t)(k * 7);
  for (unsigned i = 0; i < tx->size; i++) {
    uint8_t* buf = tx->buffers + (size_t)i * SLOT;
    tx->desc[i] = (struct vring_desc){iova_of(d, buf), HDR_LEN + r->o->size, 0, 0};
  }
  // Event mode: interrupts on both rings; poll mode: none (vringh honours NO_INTERRUPT without EVENT_IDX).
  const uint16_t flags = r->o->poll_mode ? VRING_AVAIL_F_NO_INTERRUPT : 0;
  rx->avail->flags = flags;
  tx->avail->flags = flags;
  publish_and_kick(rx);
}

int main(int argc, char** argv) {
  struct options o = parse_options(argc, argv);
  g_device = o.device;
  struct device dev;
  device_open(&dev, &o);
  struct run r = {.o = &o, .d = &dev};
  init_rings(&r);

  const uint64_t t0 = now_ns();
  const uint64_t from = t0 + (uint64_t)(o.ramp * 1e9);
  while (now_ns() < from) send_batch(&r);
  const uint64_t start = now_ns(), cpu0 = cpu_us();
  const uint64_t recv0 = r.received, sent0 = r.sent;
  const uint64_t until = start + (uint64_t)(o.seconds * 1e9);
  uint64_t end;
  while ((end = now_ns()) < until) send_batch(&r);
  const uint64_t cpu1 = cpu_us();
  const uint64_t frames = r.received - recv0, sent = r.sent - sent0;
  // Let the last frames arrive before counting losses.
  const uint64_t settle = now_ns() + 200000000ULL;
  while (r.received < r.sent && now_ns() < settle) reap_rx(&r);
  device_close(&dev);
  const double secs = (double)(end - start) / 1e9;
  printf(
      "{\"engine\":\"c\",\"mode\":\"%s\",\"size\":%u,\"batch\":%u,\"queue_size\":%u,\"seconds\":%.3f,"
      "\"sent\":%" PRIu64 ",\"frames\":%" PRIu64
      ",\"frames_per_s\":%.1f,\"gbit_per_s\":%.4f,"
      "\"lost\":%" PRIu64 ",\"bad_length\":%" PRIu64 ",\"cpu_us_per_frame\":%.3f}\n",
      o.poll_mode ? "poll" : "event", o.size, o.batch, dev.q[TXQ].size, secs, sent, frames,
      (double)frames / secs, (double)frames * o.size * 8 / secs / 1e9, r.sent - r.received, r.bad,
      frames ? (double)(cpu1 - cpu0) / (double)frames : 0.0);
  if (r.bad) {
    fprintf(stderr, "vdpa-net-bench: %" PRIu64 " frames came back with the wrong length\n", r.bad);
    return 1;
  }
  return 0;
}
