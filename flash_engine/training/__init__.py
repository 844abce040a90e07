"""Few-shot FLASH training: clips in, an action artifact out (spec: Motion Alignment Module
and Detail Enhancement Decoder)."""
