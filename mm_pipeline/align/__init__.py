"""Alignment: per-modality projections into one space, contrastive (InfoNCE) loss, attention fusion."""
