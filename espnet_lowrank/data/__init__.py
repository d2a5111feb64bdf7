"""Corpus preparation: Kaldi-style data dirs, LibriSpeech download and preparation."""
