"""Mitigation: guided selective-layer fine-tuning to erase or preserve edits, and surgical revert.

``plan`` turns a scan's findings and a layer strategy into the exact parameters to train;
``data`` builds the downstream tasks; ``train`` runs full / LoRA / DoRA fine-tuning with evaluations;
``revert`` removes the scan's low-rank edit components; ``service.run_mitigation`` ties them together
for the CLI and the app.
"""
