"""Catastrophic forgetting: penalties (L2-SP, EWC), replay of source data, and the report that
measures it (a source evaluation before and after fine-tuning)."""
