"""The FLASH model: AnimateDiff UNet with FLASH attention, the Detail Enhancement Decoder,
and the ways to get one (built-in tiny model, local diffusers-layout folders)."""
