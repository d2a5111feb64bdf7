#!/usr/bin/env bash
# LibriSpeech train-clean-100 with LR-SMS at the shape of ESPnet's LibriSpeech-100 Conformer.
# An existing copy of LibriSpeech skips the download: ./run.sh --librispeech_root /data/LibriSpeech
# Dense baseline: ./run.sh --asr_config conf/tuning/train_asr_conformer.yaml
# LR-SMS trains with a dense warm-up: 14 of its 70 epochs as its dense twin, then factorised
# (--lowrank_warmup_epochs; 0 trains low rank from the start; a dense config ignores it).
set -euo pipefail
exec "$(dirname "${BASH_SOURCE[0]}")/../../../run.sh" \
  --corpus librispeech \
  --librispeech_parts "train-clean-100 dev-clean dev-other test-clean test-other" \
  --train_set train_clean_100 \
  --valid_set dev \
  --test_sets "test_clean test_other dev_clean dev_other" \
  --asr_config conf/tuning/train_asr_lrsms.yaml \
  --inference_config conf/decode_asr.yaml \
  --token_type bpe \
  --nbpe 5000 \
  --speed_perturb_factors "0.9 1.0 1.1" \
  --ngpu 1 \
  --nj 16 \
  --lowrank_warmup_epochs 14 \
  --inference_nj 16 \
  "$@"
