// A QEMU TCG plugin that counts what the lab's guest executes, independent of the host's load: guest
// instructions, translated blocks executed, memory accesses, returns and indirect calls/jumps, and blocks
// translated, each split into user and kernel code by the block's address. A thread polls a marker file
// (mark=PATH, 10 ms) and appends "LABEL HOST_NS u_insns=… k_insns=…" to out=PATH whenever the file's first
// line changes (percpu=on adds per-vCPU counts), so a guest script brackets a steady-state window by
// writing two labels (see count-in-guest.sh and per-io.mjs). Load it with `node scripts/lab.mjs --tcg-plugin
// bench/tcg-count/tcgcount.so,out=…,mark=…`.
//
// Written against QEMU 7.2's plugin API (version 1, the host's Debian QEMU). Its header is not packaged, so
// the few declarations used are restated here; the functions are the ones the QEMU binary exports.
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

typedef uint64_t qemu_plugin_id_t;
typedef struct qemu_info_t qemu_info_t;
struct qemu_plugin_tb;
struct qemu_plugin_insn;
enum qemu_plugin_op { QEMU_PLUGIN_INLINE_ADD_U64 };
enum qemu_plugin_mem_rw { QEMU_PLUGIN_MEM_R = 1, QEMU_PLUGIN_MEM_W, QEMU_PLUGIN_MEM_RW };
typedef void (*tb_trans_cb_t)(qemu_plugin_id_t, struct qemu_plugin_tb*);
typedef void (*udata_cb_t)(qemu_plugin_id_t, void*);
typedef void (*vcpu_udata_cb_t)(unsigned int vcpu_index, void*);
enum qemu_plugin_cb_flags { QEMU_PLUGIN_CB_NO_REGS, QEMU_PLUGIN_CB_R_REGS, QEMU_PLUGIN_CB_RW_REGS };
void qemu_plugin_register_vcpu_tb_exec_cb(struct qemu_plugin_tb*, vcpu_udata_cb_t, enum qemu_plugin_cb_flags,
                                          void*);
void qemu_plugin_register_vcpu_tb_trans_cb(qemu_plugin_id_t, tb_trans_cb_t);
size_t qemu_plugin_tb_n_insns(const struct qemu_plugin_tb*);
uint64_t qemu_plugin_tb_vaddr(const struct qemu_plugin_tb*);
struct qemu_plugin_insn* qemu_plugin_tb_get_insn(const struct qemu_plugin_tb*, size_t);
const void* qemu_plugin_insn_data(const struct qemu_plugin_insn*);
size_t qemu_plugin_insn_size(const struct qemu_plugin_insn*);
void qemu_plugin_register_vcpu_tb_exec_inline(struct qemu_plugin_tb*, enum qemu_plugin_op, void*, uint64_t);
void qemu_plugin_register_vcpu_insn_exec_inline(struct qemu_plugin_insn*, enum qemu_plugin_op, void*,
                                                uint64_t);
void qemu_plugin_register_vcpu_mem_inline(struct qemu_plugin_insn*, enum qemu_plugin_mem_rw,
                                          enum qemu_plugin_op, void*, uint64_t);
void qemu_plugin_register_atexit_cb(qemu_plugin_id_t, udata_cb_t, void*);

__attribute__((visibility("default"))) int qemu_plugin_version = 1;

// Inline adds are plain (not atomic) read-modify-writes: two vCPUs in the same kind of code at once can lose
// increments. User code mostly runs on one vCPU at a time here; the kernel counts came out up to a quarter
// below percpu=on's exact ones in the lab. Take per-vCPU counts for the kernel.
enum { TBS, INSNS, MEMS, RETS, INDIRECT, TRANS, NCOUNT };
static const char* NAMES[NCOUNT] = {"tbs", "insns", "mems", "rets", "indirect", "trans"};
static uint64_t ucounters[NCOUNT] __attribute__((aligned(64)));
static uint64_t kcounters[NCOUNT] __attribute__((aligned(64)));  // on its own cache line
// percpu=on: also instructions and blocks per vCPU, through a callback per executed block (slower, but
// exact and uncontended). With count-in-guest.sh's PIN=1, CPU 0 runs the simulator's worker and CPU 1 the
// driver.
enum { MAX_VCPUS = 8 };
struct vcpu_count {
  uint64_t tbs[2], insns[2];
} __attribute__((aligned(64)));
static struct vcpu_count per_vcpu[MAX_VCPUS];
static int percpu;
static char* mark_path;
static FILE* out;

// x86-64 Linux: kernel text lives in the upper half.
static int is_kernel(uint64_t va) { return va >= 0xffff800000000000ull; }

// 1: ret (c3, c2; after prefixes such as f3), 2: indirect call or jmp (ff /2, ff /4). Under TCG each of
// these ends a block with a lookup of the next one, where a direct jump is chained.
static int kind_of(const uint8_t* p, size_t n) {
  size_t i = 0;
  while (i < n && (p[i] == 0xf3 || p[i] == 0xf2 || p[i] == 0x66 || p[i] == 0x3e || p[i] == 0x2e ||
                   (p[i] >= 0x40 && p[i] <= 0x4f)))
    i++;
  if (i >= n) return 0;
  if (p[i] == 0xc3 || p[i] == 0xc2) return 1;
  if (p[i] == 0xff && i + 1 < n) {
    int reg = (p[i + 1] >> 3) & 7;
    if (reg == 2 || reg == 4) return 2;
  }
  return 0;
}

// userdata: the block's instruction count times 2, plus 1 for kernel code.
static void on_exec(unsigned int vcpu, void* userdata) {
  uintptr_t u = (uintptr_t)userdata;
  if (vcpu >= MAX_VCPUS) return;
  per_vcpu[vcpu].tbs[u & 1]++;
  per_vcpu[vcpu].insns[u & 1] += u >> 1;
}

static void on_trans(qemu_plugin_id_t id, struct qemu_plugin_tb* tb) {
  (void)id;
  size_t n = qemu_plugin_tb_n_insns(tb);
  int k = is_kernel(qemu_plugin_tb_vaddr(tb));
  uint64_t* c = k ? kcounters : ucounters;
  __atomic_add_fetch(&c[TRANS], 1, __ATOMIC_RELAXED);
  if (percpu)
    qemu_plugin_register_vcpu_tb_exec_cb(tb, on_exec, QEMU_PLUGIN_CB_NO_REGS, (void*)(uintptr_t)(n * 2 + k));
  qemu_plugin_register_vcpu_tb_exec_inline(tb, QEMU_PLUGIN_INLINE_ADD_U64, &c[TBS], 1);
  qemu_plugin_register_vcpu_tb_exec_inline(tb, QEMU_PLUGIN_INLINE_ADD_U64, &c[INSNS], n);
  for (size_t i = 0; i < n; i++) {
    struct qemu_plugin_insn* insn = qemu_plugin_tb_get_insn(tb, i);
    qemu_plugin_register_vcpu_mem_inline(insn, QEMU_PLUGIN_MEM_RW, QEMU_PLUGIN_INLINE_ADD_U64, &c[MEMS], 1);
    int kind = kind_of(qemu_plugin_insn_data(insn), qemu_plugin_insn_size(insn));
    if (kind == 1) qemu_plugin_register_vcpu_insn_exec_inline(insn, QEMU_PLUGIN_INLINE_ADD_U64, &c[RETS], 1);
    if (kind == 2)
      qemu_plugin_register_vcpu_insn_exec_inline(insn, QEMU_PLUGIN_INLINE_ADD_U64, &c[INDIRECT], 1);
  }
}

static void snapshot(const char* label) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  fprintf(out, "%s %llu", label, (unsigned long long)ts.tv_sec * 1000000000ull + ts.tv_nsec);
  for (int i = 0; i < NCOUNT; i++) fprintf(out, " u_%s=%llu", NAMES[i], (unsigned long long)ucounters[i]);
  for (int i = 0; i < NCOUNT; i++) fprintf(out, " k_%s=%llu", NAMES[i], (unsigned long long)kcounters[i]);
  for (int v = 0; percpu && v < MAX_VCPUS; v++) {
    const struct vcpu_count* c = &per_vcpu[v];
    if (c->tbs[0] + c->tbs[1] == 0) continue;
    fprintf(out, " cpu%d_u_insns=%llu cpu%d_u_tbs=%llu cpu%d_k_insns=%llu cpu%d_k_tbs=%llu", v,
            (unsigned long long)c->insns[0], v, (unsigned long long)c->tbs[0], v,
            (unsigned long long)c->insns[1], v, (unsigned long long)c->tbs[1]);
  }
  fprintf(out, "\n");
  fflush(out);
}

static void* watch(void* arg) {
  (void)arg;
  char last[256] = "", now[256];
  for (;;) {
    usleep(10000);
    FILE* f = fopen(mark_path, "r");
    if (!f) continue;
    size_t n = fread(now, 1, sizeof now - 1, f);
    fclose(f);
    now[n] = 0;
    char* nl = strchr(now, '\n');
    if (nl) *nl = 0;
    if (n && strcmp(now, last) != 0) {
      strcpy(last, now);
      snapshot(now);
    }
  }
  return NULL;
}

static void at_exit(qemu_plugin_id_t id, void* p) {
  (void)id;
  (void)p;
  snapshot("exit");
}

__attribute__((visibility("default"))) int qemu_plugin_install(qemu_plugin_id_t id, const qemu_info_t* info,
                                                               int argc, char** argv) {
  (void)info;
  const char* out_path = "/tmp/tcgcount.out";
  mark_path = "/tmp/tcgcount.mark";
  for (int i = 0; i < argc; i++) {
    if (strncmp(argv[i], "out=", 4) == 0) out_path = argv[i] + 4;
    if (strncmp(argv[i], "mark=", 5) == 0) mark_path = argv[i] + 5;
    if (strcmp(argv[i], "percpu=on") == 0) percpu = 1;
  }
  out = fopen(out_path, "a");
  if (!out) return -1;
  snapshot("install");
  qemu_plugin_register_vcpu_tb_trans_cb(id, on_trans);
  qemu_plugin_register_atexit_cb(id, at_exit, NULL);
  pthread_t t;
  pthread_create(&t, NULL, watch, NULL);
  pthread_detach(t);
  return 0;
}
