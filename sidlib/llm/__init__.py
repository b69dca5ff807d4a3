"""The LLM that speaks SIDs: base model (base.py), vocabulary extension (vocab.py), SFT data
(sft_data.py, its tasks in tasks/), fine-tuning entry point (train.py)."""
