"""The authors' released MAGVLT (kakaobrain/magvlt): checkpoint reading, text tokenizer and caption cleaning."""
