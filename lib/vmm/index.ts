/** VMM building blocks: guest RAM, a vDPA backend driven by a guest, and its saved state. See docs/vmm.md. */
export * from './guest-memory';
export * from './backend';
export * from './state';
