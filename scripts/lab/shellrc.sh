# bash's rc file for `npm run lab -- --shell` (an interactive root shell in the guest, on /dev/ttyS1 = the
# host terminal). The devices are ready; the CLI is on PATH as vhost-vdpa.
PS1='vdpa-lab:\w# '
# One node start (~1 s under KVM, a few under TCG) for tab completion of the CLI.
eval "$(vhost-vdpa completion bash 2>/dev/null)"
echo "vDPA lab, kernel $VDPA_LAB_KERNEL, root in $PWD. Devices (also in /run/vdpa-lab.json):"
echo "$VDPA_LAB_DEVICES" | sed 's/}, *{/}\n{/g; s/^\[//; s/\]$//' | sed 's/^/  /'
echo "Try: vhost-vdpa dev list; vhost-vdpa info blk0; node examples/blk.js. exit (or ^D) powers the VM off."
