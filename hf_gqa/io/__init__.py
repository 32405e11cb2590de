"""The disk layer: reading sources (config, model, tokenizer, safetensors), writing outputs atomically, the
Auto-class registration of hf-gqa's model classes, and Hub uploads. No conversion logic here."""
