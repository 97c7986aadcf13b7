"""Building blocks several methods share, each written once: maps (pooling, upsampling, blur, anchor
maps), losses, the reference patch memory, sparsemax, mosaics, pseudo-anomaly synthesis and text
prompts."""
