"""The one training core shared by every stage: config, data, loader, loop, checkpoints, run folders."""
import os

# GPUs numbered as NNI numbers them: NNI's GPU scheduler reads NVML, whose order is the PCI bus
# order, and gives a trial CUDA_VISIBLE_DEVICES in it; CUDA's default order is fastest first, so on
# a server with mixed GPU models a trial would use another GPU than the one NNI assigned it. CUDA
# reads this when it initialises, so it is set here, on the first import of the core, before any
# CUDA call; a value the user exported wins (docs/speed.md, "On a GPU").
os.environ.setdefault("CUDA_DEVICE_ORDER", "PCI_BUS_ID")
