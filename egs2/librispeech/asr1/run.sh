#!/usr/bin/env bash
# LibriSpeech 960 h with LR-SMS at the shape of ESPnet's LibriSpeech Conformer (512 wide, 8 heads, 2048 units).
# An existing copy of LibriSpeech skips the download: ./run.sh --librispeech_root /data/LibriSpeech
# Dense baseline: ./run.sh --asr_config conf/tuning/train_asr_conformer_960.yaml
# LR-SMS trains with a dense warm-up: 7 of its 35 epochs as its dense twin, then factorised
# (--lowrank_warmup_epochs; 0 trains low rank from the start; a dense config ignores it).
set -euo pipefail
exec "$(dirname "${BASH_SOURCE[0]}")/../../../run.sh" \
  --corpus librispeech \
  --librispeech_parts "train-clean-100 train-clean-360 train-other-500 dev-clean dev-other test-clean test-other" \
  --train_set train_960 \
  --valid_set dev \
  --test_sets "test_clean test_other dev_clean dev_other" \
  --asr_config conf/tuning/train_asr_lrsms_960.yaml \
  --inference_config conf/decode_asr.yaml \
  --token_type bpe \
  --nbpe 5000 \
  --speed_perturb_factors "0.9 1.0 1.1" \
  --ngpu 4 \
  --nj 32 \
  --lowrank_warmup_epochs 7 \
  --inference_nj 32 \
  "$@"
