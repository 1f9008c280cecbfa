// SPDX-License-Identifier: MIT
//
// vdpa-blk-bench: a minimal userspace virtio-blk driver over vhost-vdpa, used as the benchmark's baseline
// ("the nearest thing to the device's own limit"). It is deliberately independent of the vhost-vdpa npm
// package but does the same work per request: one split virtqueue in memfd-backed MAP_SHARED memory mapped
// through IOTLB v2 messages, a 3-descriptor chain (header, 4 KiB data, status byte) per request, an eventfd
// kick per batch of submissions, and completions seen either by spinning on used->idx (poll mode, the device
// is told not to interrupt) or by blocking on the call eventfd (event mode).
//
// Usage: vdpa-blk-bench --device /dev/vhost-vdpa-0 --rw randread|randwrite [--qd N] [--seconds S]
//                       [--mode poll|event] [--bs BYTES] [--queue-size N] [--ramp S] [--seed N]
// Prints one JSON object on stdout; diagnostics go to stderr. Exit status 0 on success, 1 on any failure
// (device cannot be opened, a request failed or timed out), 2 on bad arguments.
//
// Build: gcc -O2 -Wall -Wextra -o vdpa-blk-bench vdpa-blk-bench.c   (or `make` in this directory)
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

// ---- uAPI constants (defined here when the installed headers predate them) -------------------------------

#ifndef VHOST_VDPA_GET_CONFIG_SIZE
#define VHOST_VDPA_GET_CONFIG_SIZE _IOR(VHOST_VIRTIO, 0x79, __u32)
#endif
#ifndef VHOST_VDPA_GET_VQS_COUNT
#define VHOST_VDPA_GET_VQS_COUNT _IOR(VHOST_VIRTIO, 0x80, __u32)
#endif
#ifndef VHOST_IOTLB_BATCH_BEGIN
#define VHOST_IOTLB_BATCH_BEGIN 5
#define VHOST_IOTLB_BATCH_END 6
#endif
// Backend feature *bit numbers* (vhost_types.h), used as 1ULL << bit.
#ifndef VHOST_BACKEND_F_IOTLB_MSG_V2
#define VHOST_BACKEND_F_IOTLB_MSG_V2 0x1
#endif
#ifndef VHOST_BACKEND_F_IOTLB_BATCH
#define VHOST_BACKEND_F_IOTLB_BATCH 0x2
#endif

// virtio status bits and feature bits (virtio_config.h / virtio_blk.h), spelled out to keep this file
// standalone.
#define VIRTIO_CONFIG_S_ACKNOWLEDGE 1
#define VIRTIO_CONFIG_S_DRIVER 2
#define VIRTIO_CONFIG_S_DRIVER_OK 4
#define VIRTIO_CONFIG_S_FEATURES_OK 8
#define VIRTIO_BLK_F_SIZE_MAX 1
#define VIRTIO_BLK_F_SEG_MAX 2
#define VIRTIO_BLK_F_BLK_SIZE 6
#define VIRTIO_BLK_F_FLUSH 9
#define VIRTIO_F_VERSION_1 32
#define VIRTIO_F_ACCESS_PLATFORM 33
#define VIRTIO_BLK_T_IN 0
#define VIRTIO_BLK_T_OUT 1
#define VIRTIO_BLK_S_OK 0

// Split virtqueue structs and VRING_* flags come from <linux/virtio_ring.h> (pulled in by vhost_types.h);
// their fields are little-endian, and this program targets little-endian hosts (x86-64, arm64).
#if __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "vdpa-blk-bench assumes a little-endian host (virtio 1.x rings are little-endian)"
#endif
struct virtio_blk_outhdr {
  uint32_t type;
  uint32_t ioprio;
  uint64_t sector;
};

#define DESCS_PER_REQ 3
#define SECTOR_SIZE 512
// Where the single DMA region starts in the device's IOVA space (anything inside GET_IOVA_RANGE works).
#define IOVA_BASE 0x100000ULL
// A request that takes longer than this is reported as a device hang.
#define STALL_NS (5ULL * 1000 * 1000 * 1000)

// ---- small helpers --------------------------------------------------------------------------------------

static const char* g_device = NULL;

static void die(const char* fmt, ...) __attribute__((noreturn, format(printf, 1, 2)));
static void die(const char* fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fprintf(stderr, "vdpa-blk-bench: ");
  if (g_device) fprintf(stderr, "%s: ", g_device);
  vfprintf(stderr, fmt, ap);
  fputc('\n', stderr);
  va_end(ap);
  exit(1);
}

// ioctl that dies with the request's name and strerror on failure.
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

static uint64_t xorshift64(uint64_t* s) {  // xorshift64*: fast, good enough to spread offsets
  uint64_t x = *s;
  x ^= x >> 12;
  x ^= x << 25;
  x ^= x >> 27;
  *s = x;
  return x * 0x2545F4914F6CDD1DULL;
}

// Latency histogram: 100 ns buckets up to 100 ms, plus an overflow count and the maximum. Exact enough for
// p50/p99 at the latencies seen here (µs to ms) and allocation-free while measuring.
#define HIST_BUCKET_NS 100
#define HIST_BUCKETS 1000000
struct histogram {
  uint32_t* counts;
  uint64_t total, overflow, max_ns, sum_ns;
};

static void hist_add(struct histogram* h, uint64_t ns) {
  uint64_t b = ns / HIST_BUCKET_NS;
  if (b < HIST_BUCKETS)
    h->counts[b]++;
  else
    h->overflow++;
  if (ns > h->max_ns) h->max_ns = ns;
  h->sum_ns += ns;
  h->total++;
}

// Smallest latency (µs, bucket midpoint) such that at least fraction q of the samples are ≤ it.
static double hist_quantile_us(const struct histogram* h, double q) {
  if (h->total == 0) return 0;
  uint64_t rank = (uint64_t)(q * (double)h->total + 0.5);
  if (rank < 1) rank = 1;
  uint64_t seen = 0;
  for (uint64_t b = 0; b < HIST_BUCKETS; b++) {
    seen += h->counts[b];
    if (seen >= rank) return ((double)b + 0.5) * HIST_BUCKET_NS / 1000.0;
  }
  return (double)h->max_ns / 1000.0;
}

// ---- options ---------------------------------------------------------------------------------------------

struct options {
  const char* device;
  bool write;
  unsigned qd;
  double seconds, ramp;
  bool poll_mode;
  unsigned bs;
  unsigned queue_size;  // 0 = the device's maximum
  uint64_t seed;
  uint64_t warmup_ios;    // completions before the ramp starts (symmetry with the JS harness)
  uint64_t think_ns;      // busy-wait between seeing completions and resubmitting (models a slower driver)
  const char* vcpu_mark;  // in the lab: label for the host's vCPU CPU times of the window (NULL: none)
};

static const char USAGE[] =
    "Usage: vdpa-blk-bench --device /dev/vhost-vdpa-N --rw randread|randwrite [options]\n"
    "  --qd N           requests in flight (default 1)\n"
    "  --seconds S      measured duration (default 10)\n"
    "  --ramp S         unmeasured warm-up before it (default 0)\n"
    "  --warmup-ios N   unmeasured completions before the ramp (default 0)\n"
    "  --mode poll|event  spin on used->idx (default) or block on the call eventfd\n"
    "  --bs BYTES       request size, a multiple of 512 up to the device's size_max (default 4096)\n"
    "  --queue-size N   virtqueue size (default: the device's maximum)\n"
    "  --seed N         offset generator seed (default 1)\n"
    "  --think-us N     busy-wait N us after seeing completions before resubmitting (default 0): models\n"
    "                   a driver whose turnaround is slower; latency is still counted from submission\n"
    "  --vcpu-mark L    in the lab, write L-start / L-end to /run/lab/vcpu-mark when the measured window\n"
    "                   starts and ends (the host then records its vCPU threads' CPU time)\n"
    "Prints {iops, p50_us, p99_us, cpu_us_per_io, ios, seconds, ...} as JSON.\n";

static void usage_error(const char* fmt, ...) __attribute__((noreturn, format(printf, 1, 2)));
static void usage_error(const char* fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fprintf(stderr, "vdpa-blk-bench: ");
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
  struct options o = {.qd = 1, .seconds = 10, .ramp = 0, .poll_mode = true, .bs = 4096, .seed = 1};
  const char* rw = NULL;
  static const struct option longopts[] = {
      {"device", required_argument, 0, 'd'},   {"rw", required_argument, 0, 'r'},
      {"qd", required_argument, 0, 'q'},       {"seconds", required_argument, 0, 's'},
      {"ramp", required_argument, 0, 'R'},     {"mode", required_argument, 0, 'm'},
      {"bs", required_argument, 0, 'b'},       {"queue-size", required_argument, 0, 'Q'},
      {"seed", required_argument, 0, 'S'},     {"warmup-ios", required_argument, 0, 'W'},
      {"think-us", required_argument, 0, 'T'}, {"vcpu-mark", required_argument, 0, 'V'},
      {"help", no_argument, 0, 'h'},           {0, 0, 0, 0}};
  int c;
  opterr = 0;
  while ((c = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
    switch (c) {
      case 'd':
        o.device = optarg;
        break;
      case 'r':
        rw = optarg;
        break;
      case 'q':
        o.qd = (unsigned)parse_number("--qd", optarg, 1, 1024);
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
          usage_error("--mode: expected poll or event, got '%s'", optarg);
        break;
      case 'b':
        o.bs = (unsigned)parse_number("--bs", optarg, SECTOR_SIZE, 1 << 20);
        break;
      case 'Q':
        o.queue_size = (unsigned)parse_number("--queue-size", optarg, 1, 32768);
        break;
      case 'W':
        o.warmup_ios = (uint64_t)parse_number("--warmup-ios", optarg, 0, 1e12);
        break;
      case 'T':
        o.think_ns = (uint64_t)(parse_number("--think-us", optarg, 0, 1e6) * 1000);
        break;
      case 'V':
        o.vcpu_mark = optarg;
        break;
      case 'S':
        o.seed = (uint64_t)parse_number("--seed", optarg, 1, 1e15);
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
  if (!rw) usage_error("--rw is required");
  if (strcmp(rw, "randread") == 0)
    o.write = false;
  else if (strcmp(rw, "randwrite") == 0)
    o.write = true;
  else
    usage_error("--rw: expected randread or randwrite, got '%s'", rw);
  if (o.bs % SECTOR_SIZE) usage_error("--bs must be a multiple of %d", SECTOR_SIZE);
  return o;
}

// ---- the device ------------------------------------------------------------------------------------------

struct device {
  int fd, kick_fd, call_fd, mem_fd;
  unsigned qsize;
  uint64_t capacity_sectors;
  uint32_t size_max;
  // The DMA region (one memfd mapping) and where each part of it lives.
  uint8_t* mem;
  size_t mem_len;
  struct vring_desc* desc;
  struct vring_avail* avail;
  struct vring_used* used;
  size_t desc_off, avail_off, used_off, hdr_off, status_off, data_off;
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
  // Every handler failure comes back as EFAULT (vhost_chr_write_iter), so the message type is the only clue.
  if (write(d->fd, &m, sizeof m) != (ssize_t)sizeof m)
    die("IOTLB message type %u: %s", type, strerror(errno));
}

static size_t align_up(size_t v, size_t a) { return (v + a - 1) / a * a; }

// Brings the device up exactly as §5.2 of docs/vdpa-facts.md describes (the order every consumer uses).
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
  if (id != 2) die("virtio device id %u is not a block device (2)", id);

  set_status(d, 0);
  set_status(d, VIRTIO_CONFIG_S_ACKNOWLEDGE);
  set_status(d, VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER);
  uint64_t offered = 0;
  XIOCTL(d->fd, VHOST_GET_FEATURES, &offered);
  const uint64_t required = (1ULL << VIRTIO_F_VERSION_1) | (1ULL << VIRTIO_F_ACCESS_PLATFORM);
  if ((offered & required) != required)
    die("device features 0x%" PRIx64 " lack VERSION_1|ACCESS_PLATFORM", offered);
  const uint64_t optional = (1ULL << VIRTIO_BLK_F_SIZE_MAX) | (1ULL << VIRTIO_BLK_F_SEG_MAX) |
                            (1ULL << VIRTIO_BLK_F_BLK_SIZE) | (1ULL << VIRTIO_BLK_F_FLUSH);
  uint64_t features = required | (offered & optional);
  XIOCTL(d->fd, VHOST_SET_FEATURES, &features);
  set_status(d, VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER | VIRTIO_CONFIG_S_FEATURES_OK);
  uint8_t status = 0;
  XIOCTL(d->fd, VHOST_VDPA_GET_STATUS, &status);
  if (!(status & VIRTIO_CONFIG_S_FEATURES_OK)) die("device did not accept features 0x%" PRIx64, features);

  // virtio_blk_config: capacity (le64) at 0, size_max (le32) at 8. Never ask for more than GET_CONFIG_SIZE.
  uint32_t config_size = 0;
  XIOCTL(d->fd, VHOST_VDPA_GET_CONFIG_SIZE, &config_size);
  if (config_size < 12) die("config space of %u bytes is too small for virtio-blk", config_size);
  struct {
    struct vhost_vdpa_config hdr;
    uint8_t buf[12];
  } cfg = {.hdr = {.off = 0, .len = 12}};
  XIOCTL(d->fd, VHOST_VDPA_GET_CONFIG, &cfg);
  memcpy(&d->capacity_sectors, cfg.buf, 8);
  memcpy(&d->size_max, cfg.buf + 8, 4);
  if (!(features & (1ULL << VIRTIO_BLK_F_SIZE_MAX))) d->size_max = UINT32_MAX;
  if (o->bs > d->size_max)
    die("--bs %u exceeds the device's size_max %u (one data segment per request)", o->bs, d->size_max);
  if (d->capacity_sectors * SECTOR_SIZE < o->bs)
    die("device capacity %" PRIu64 " sectors is smaller than one request", d->capacity_sectors);

  uint16_t max_qsize = 0;
  XIOCTL(d->fd, VHOST_VDPA_GET_VRING_NUM, &max_qsize);
  d->qsize = o->queue_size ? o->queue_size : max_qsize;
  if (d->qsize > max_qsize || (d->qsize & (d->qsize - 1)))
    die("queue size %u: must be a power of two ≤ %u", d->qsize, max_qsize);
  if (o->qd * DESCS_PER_REQ > d->qsize)
    die("--qd %u needs %u descriptors; the queue has %u", o->qd, o->qd * DESCS_PER_REQ, d->qsize);

  // One memfd-backed MAP_SHARED region holds the ring, the request headers, status bytes and data buffers:
  // vdpa_sim (VA mode) only sees file-backed shared memory.
  const size_t page = (size_t)sysconf(_SC_PAGESIZE);
  d->desc_off = 0;
  d->avail_off = d->desc_off + 16ULL * d->qsize;
  d->used_off = align_up(d->avail_off + 6 + 2ULL * d->qsize, 4);
  d->hdr_off = align_up(d->used_off + 6 + 8ULL * d->qsize, 64);
  d->status_off = d->hdr_off + sizeof(struct virtio_blk_outhdr) * o->qd;
  d->data_off = align_up(d->status_off + o->qd, page);
  d->mem_len = align_up(d->data_off + (size_t)o->bs * o->qd, page);
  d->mem_fd = memfd_create("vdpa-blk-bench", MFD_CLOEXEC);
  if (d->mem_fd < 0) die("memfd_create: %s", strerror(errno));
  if (ftruncate(d->mem_fd, (off_t)d->mem_len) < 0) die("ftruncate: %s", strerror(errno));
  d->mem = mmap(NULL, d->mem_len, PROT_READ | PROT_WRITE, MAP_SHARED, d->mem_fd, 0);
  if (d->mem == MAP_FAILED) die("mmap: %s", strerror(errno));
  d->desc = (struct vring_desc*)(d->mem + d->desc_off);
  d->avail = (struct vring_avail*)(d->mem + d->avail_off);
  d->used = (struct vring_used*)(d->mem + d->used_off);

  iotlb_write(d, VHOST_IOTLB_BATCH_BEGIN, 0, 0, 0, 0);
  iotlb_write(d, VHOST_IOTLB_UPDATE, IOVA_BASE, d->mem_len, (uint64_t)(uintptr_t)d->mem, VHOST_ACCESS_RW);
  iotlb_write(d, VHOST_IOTLB_BATCH_END, 0, 0, 0, 0);

  struct vhost_vring_state num = {.index = 0, .num = d->qsize};
  XIOCTL(d->fd, VHOST_SET_VRING_NUM, &num);
  struct vhost_vring_state base = {.index = 0, .num = 0};
  XIOCTL(d->fd, VHOST_SET_VRING_BASE, &base);
  struct vhost_vring_addr addr = {.index = 0,
                                  .desc_user_addr = iova_of(d, d->desc),
                                  .avail_user_addr = iova_of(d, d->avail),
                                  .used_user_addr = iova_of(d, d->used)};
  XIOCTL(d->fd, VHOST_SET_VRING_ADDR, &addr);
  d->kick_fd = eventfd(0, EFD_CLOEXEC);
  d->call_fd = eventfd(0, EFD_CLOEXEC);
  if (d->kick_fd < 0 || d->call_fd < 0) die("eventfd: %s", strerror(errno));
  struct vhost_vring_file kick = {.index = 0, .fd = d->kick_fd};
  XIOCTL(d->fd, VHOST_SET_VRING_KICK, &kick);
  struct vhost_vring_file call = {.index = 0, .fd = d->call_fd};
  XIOCTL(d->fd, VHOST_SET_VRING_CALL, &call);
  struct vhost_vring_state enable = {.index = 0, .num = 1};
  XIOCTL(d->fd, VHOST_VDPA_SET_VRING_ENABLE, &enable);
  set_status(d, VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER | VIRTIO_CONFIG_S_FEATURES_OK |
                    VIRTIO_CONFIG_S_DRIVER_OK);
  XIOCTL(d->fd, VHOST_VDPA_GET_STATUS, &status);
  if (!(status & VIRTIO_CONFIG_S_DRIVER_OK)) die("device refused DRIVER_OK (status 0x%x)", status);
}

static void device_close(struct device* d) {
  set_status(d, 0);  // reset: the device stops touching our memory before we unmap it
  close(d->kick_fd);
  close(d->call_fd);
  close(d->fd);  // also drops the IOTLB mappings
  munmap(d->mem, d->mem_len);
  close(d->mem_fd);
}

// ---- the load generator ----------------------------------------------------------------------------------

struct run {
  struct device* dev;
  const struct options* o;
  uint64_t rng;
  uint64_t blocks;      // capacity in request-sized blocks
  uint64_t* submit_ns;  // per slot
  uint16_t avail_idx;   // next free avail ring position (ours; the device reads the published copy)
  uint16_t last_used;   // next used ring position to consume
  unsigned inflight;
  uint64_t errors;
};

// Pre-links slot i's chain once: descriptors 3i → 3i+1 → 3i+2 (header, data, status); only the header's
// sector (and, for reads, nothing else) changes per request.
static void init_slots(struct run* r) {
  struct device* d = r->dev;
  for (unsigned i = 0; i < r->o->qd; i++) {
    struct virtio_blk_outhdr* hdr = (struct virtio_blk_outhdr*)(d->mem + d->hdr_off) + i;
    uint8_t* data = d->mem + d->data_off + (size_t)i * r->o->bs;
    uint8_t* status = d->mem + d->status_off + i;
    hdr->type = r->o->write ? VIRTIO_BLK_T_OUT : VIRTIO_BLK_T_IN;
    memset(data, 0xA5 ^ (int)i, r->o->bs);
    struct vring_desc* c = &d->desc[i * DESCS_PER_REQ];
    c[0] = (struct vring_desc){iova_of(d, hdr), sizeof *hdr, VRING_DESC_F_NEXT,
                               (uint16_t)(i * DESCS_PER_REQ + 1)};
    c[1] = (struct vring_desc){iova_of(d, data), r->o->bs,
                               (uint16_t)(VRING_DESC_F_NEXT | (r->o->write ? 0 : VRING_DESC_F_WRITE)),
                               (uint16_t)(i * DESCS_PER_REQ + 2)};
    c[2] = (struct vring_desc){iova_of(d, status), 1, VRING_DESC_F_WRITE, 0};
  }
  // Poll mode: ask the device not to signal the call eventfd (vringh_need_notify honours it without
  // EVENT_IDX).
  d->avail->flags = r->o->poll_mode ? VRING_AVAIL_F_NO_INTERRUPT : 0;
}

// Puts slot i in the avail ring (not yet visible to the device).
static void queue_slot(struct run* r, unsigned i, uint64_t t) {
  struct device* d = r->dev;
  struct virtio_blk_outhdr* hdr = (struct virtio_blk_outhdr*)(d->mem + d->hdr_off) + i;
  hdr->sector = (xorshift64(&r->rng) % r->blocks) * (r->o->bs / SECTOR_SIZE);
  d->mem[d->status_off + i] = 0xFF;
  d->avail->ring[r->avail_idx & (d->qsize - 1)] = (uint16_t)(i * DESCS_PER_REQ);
  r->avail_idx++;
  r->submit_ns[i] = t;
  r->inflight++;
}

// Publishes the queued entries and kicks unless the device asked not to be notified.
static void publish_and_kick(struct run* r) {
  struct device* d = r->dev;
  // Release: descriptors, header and ring entries are visible before the new avail->idx.
  atomic_store_explicit((_Atomic uint16_t*)&d->avail->idx, r->avail_idx, memory_order_release);
  // Full fence: the idx store must be visible before we read used->flags, or we could skip a needed kick
  // (virtio spec §2.7.13.4's "memory barrier" between the two).
  atomic_thread_fence(memory_order_seq_cst);
  if (atomic_load_explicit((_Atomic uint16_t*)&d->used->flags, memory_order_relaxed) & VRING_USED_F_NO_NOTIFY)
    return;
  static const uint64_t one = 1;
  if (write(d->kick_fd, &one, sizeof one) != sizeof one) die("kick eventfd write: %s", strerror(errno));
}

// Waits for the call eventfd (event mode). Returns false on a stall.
static bool wait_call(struct run* r) {
  struct pollfd p = {.fd = r->dev->call_fd, .events = POLLIN};
  int n;
  do n = poll(&p, 1, (int)(STALL_NS / 1000000));
  while (n < 0 && errno == EINTR);
  if (n < 0) die("poll(call eventfd): %s", strerror(errno));
  if (n == 0) return false;
  uint64_t v;
  if (read(r->dev->call_fd, &v, sizeof v) != sizeof v) die("read(call eventfd): %s", strerror(errno));
  return true;
}

// The measurement window: completions at or after `from_ns` and before `until_ns` are counted (the time
// before is the unmeasured ramp); every slot is resubmitted until `until_ns`, so the queue depth stays
// constant across the ramp/measure boundary.
struct window {
  // While warmup_left > 0, completions only count it down; at zero the ramp (ramp_ns) and the window start.
  uint64_t warmup_left, ramp_ns, measure_ns, warmup_done_ns;
  uint64_t from_ns, until_ns;
  uint64_t start_ns, cpu_start_us;  // first completion inside the window
  uint64_t ios;
};

// --vcpu-mark: asks the lab's host for its vCPU threads' CPU time (scripts/lab/vcpu-times.mjs). Twice per
// run, outside the timed loop's work.
static void mark_window(const struct options* o, const char* edge) {
  if (!o->vcpu_mark) return;
  FILE* f = fopen("/run/lab/vcpu-mark", "w");
  if (!f) die("--vcpu-mark: /run/lab/vcpu-mark: %s", strerror(errno));
  fprintf(f, "%s-%s\n", o->vcpu_mark, edge);
  fclose(f);
}

// Runs the load until `w->until_ns`, recording latencies of in-window completions into `h`.
static void run_load(struct run* r, struct window* w, struct histogram* h) {
  struct device* d = r->dev;
  uint64_t last_progress = now_ns();
  for (;;) {
    // Acquire: the used ring entries (and the device's writes to data/status) are visible after the idx.
    uint16_t used_idx = atomic_load_explicit((_Atomic uint16_t*)&d->used->idx, memory_order_acquire);
    if (used_idx == r->last_used) {
      uint64_t t = now_ns();
      if (t >= w->until_ns) {
        if (w->start_ns) mark_window(r->o, "end");
        return;
      }
      if (t - last_progress > STALL_NS)
        die("stalled: no completion for 5 s (used.idx %u, %u in flight)", used_idx, r->inflight);
      if (!r->o->poll_mode && !wait_call(r))
        die("stalled: no call eventfd signal for 5 s (used.idx %u, %u in flight)", used_idx, r->inflight);
      continue;
    }
    uint64_t t = now_ns();
    last_progress = t;
    if (w->warmup_left > 0) {
      uint16_t n = (uint16_t)(used_idx - r->last_used);
      if (n >= w->warmup_left) {
        w->warmup_left = 0;
        w->warmup_done_ns = t;
        w->from_ns = t + w->ramp_ns + 1;  // this batch belongs to the warm-up
        w->until_ns = w->from_ns + w->measure_ns;
      } else {
        w->warmup_left -= n;
      }
    }
    const bool in_window = t >= w->from_ns && t < w->until_ns;
    if (in_window && w->start_ns == 0) {
      w->start_ns = t;
      w->cpu_start_us = cpu_us();
      mark_window(r->o, "start");
    }
    // --think-us: the resubmissions below start this much later; their latency counts from then.
    uint64_t submit_t = t;
    if (r->o->think_ns && t < w->until_ns) {
      while (now_ns() - t < r->o->think_ns) {
      }
      submit_t = now_ns();
    }
    while (r->last_used != used_idx) {
      struct vring_used_elem* e = &d->used->ring[r->last_used & (d->qsize - 1)];
      unsigned slot = e->id / DESCS_PER_REQ;
      r->last_used++;
      r->inflight--;
      if (d->mem[d->status_off + slot] != VIRTIO_BLK_S_OK) {
        if (r->errors++ == 0)
          fprintf(stderr, "vdpa-blk-bench: request failed with virtio-blk status %u\n",
                  d->mem[d->status_off + slot]);
      }
      if (in_window) {
        hist_add(h, t - r->submit_ns[slot]);
        w->ios++;
      }
      if (t < w->until_ns) queue_slot(r, slot, submit_t);
    }
    if (t < w->until_ns) publish_and_kick(r);
  }
}

// Waits for every request still in flight, so the device is idle before it is reset.
static void drain(struct run* r) {
  struct device* d = r->dev;
  uint64_t since = now_ns();
  while (r->inflight > 0) {
    uint16_t used_idx = atomic_load_explicit((_Atomic uint16_t*)&d->used->idx, memory_order_acquire);
    if (used_idx != r->last_used) {
      r->inflight -= (uint16_t)(used_idx - r->last_used);
      r->last_used = used_idx;
      continue;
    }
    if (now_ns() - since > STALL_NS) die("stalled while draining (%u in flight)", r->inflight);
    if (!r->o->poll_mode && !wait_call(r)) die("stalled while draining (%u in flight)", r->inflight);
  }
}

int main(int argc, char** argv) {
  struct options o = parse_options(argc, argv);
  g_device = o.device;
  struct device dev;
  device_open(&dev, &o);

  struct run r = {.dev = &dev, .o = &o, .rng = o.seed, .blocks = dev.capacity_sectors * SECTOR_SIZE / o.bs};
  r.submit_ns = calloc(o.qd, sizeof *r.submit_ns);
  struct histogram h = {.counts = calloc(HIST_BUCKETS, sizeof(uint32_t))};
  if (!r.submit_ns || !h.counts) die("out of memory");
  init_slots(&r);

  uint64_t t = now_ns();
  for (unsigned i = 0; i < o.qd; i++) queue_slot(&r, i, t);
  publish_and_kick(&r);
  struct window w = {.warmup_left = o.warmup_ios,
                     .ramp_ns = (uint64_t)(o.ramp * 1e9),
                     .measure_ns = (uint64_t)(o.seconds * 1e9),
                     .warmup_done_ns = t};
  // During a warm-up the window lies beyond any time; it is placed when the count is reached.
  w.from_ns = o.warmup_ios ? UINT64_MAX - 1 : t + w.ramp_ns;
  w.until_ns = o.warmup_ios ? UINT64_MAX : w.from_ns + w.measure_ns;
  run_load(&r, &w, &h);
  const uint64_t cpu1 = cpu_us();
  drain(&r);
  device_close(&dev);
  if (w.ios == 0) die("no request completed inside the measured interval");

  const uint64_t ios = w.ios, cpu0 = w.cpu_start_us;
  // The window ends at until_ns (an event-mode wait may overshoot it slightly; those completions are not
  // counted).
  double secs = (double)(w.until_ns - w.start_ns) / 1e9;
  printf(
      "{\"engine\":\"c\",\"mode\":\"%s\",\"rw\":\"%s\",\"qd\":%u,\"bs\":%u,\"queue_size\":%u,"
      "\"seconds\":%.3f,\"ios\":%" PRIu64
      ",\"iops\":%.1f,\"p50_us\":%.1f,\"p99_us\":%.1f,\"mean_us\":%.1f,"
      "\"max_us\":%.1f,\"cpu_us_per_io\":%.2f,\"errors\":%" PRIu64 ",\"warmup_ios\":%" PRIu64
      ",\"warmup_seconds\":%.1f,\"percentiles_us\":{",
      o.poll_mode ? "poll" : "event", o.write ? "randwrite" : "randread", o.qd, o.bs, dev.qsize, secs, ios,
      (double)ios / secs, hist_quantile_us(&h, 0.50), hist_quantile_us(&h, 0.99),
      h.total ? (double)h.sum_ns / (double)h.total / 1000.0 : 0.0, (double)h.max_ns / 1000.0,
      ios ? (double)(cpu1 - cpu0) / (double)ios : 0.0, r.errors, o.warmup_ios,
      (double)(w.warmup_done_ns - t) / 1e9);
  // The percentiles every engine reports (fio's default list), for the latency plots in docs/bench.md.
  static const double percentiles[] = {1, 5, 10, 20, 30, 40, 50, 60, 70, 80, 90, 95, 99, 99.5, 99.9};
  for (size_t i = 0; i < sizeof percentiles / sizeof percentiles[0]; i++)
    printf("%s\"%g\":%.1f", i ? "," : "", percentiles[i], hist_quantile_us(&h, percentiles[i] / 100));
  printf("}}\n");
  free(h.counts);
  free(r.submit_ns);
  if (r.errors) {
    fprintf(stderr, "vdpa-blk-bench: %" PRIu64 " of %" PRIu64 " requests failed\n", r.errors, ios);
    return 1;
  }
  return 0;
}
