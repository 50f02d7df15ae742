"""The one training core shared by every stage: config, data, loader, loop, checkpoints, run folders."""
