#!/usr/bin/env bash
# espnet-lowrank ASR pipeline, with ESPnet's stage numbers and option names.
#
#   ./run.sh                                   # the embedded corpus, end to end, on CPU
#   ./run.sh --stage 11 --stop_stage 13        # train, decode, score only
#   ./run.sh --asr_config conf/tuning/train_asr_conformer.yaml --asr_tag dense
#
# Stages: 1 data · 2 speed perturbation · 3 format/dump · 4 length filter · 5 token list
#         10 collect stats · 11 train · 12 decode · 13 score · 14 pack
# Each stage leaves a marker (.done) and is skipped when it finds one: delete the marker to redo it.
# Training (11) always resumes from exp/.../checkpoint.pth when one exists.
set -euo pipefail

log() { echo "[$(date '+%F %T')] run.sh: $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# --- options (every variable below is an option: --name value) ---------------------------------
stage=1                 # first stage to run
stop_stage=14           # last stage to run
ngpu=0                  # GPUs for training (>1: ESPnet's DDP on this node); decoding uses 0 or 1
nj=2                    # parallel jobs for data preparation and stats
inference_nj=2          # parallel decoding jobs per test set
corpus=embedded         # stage 1: embedded | librispeech | none (bring your own data/<set> dirs)
librispeech_root=       # an existing LibriSpeech/ directory: no download
librispeech_parts="dev-clean test-clean dev-other test-other train-clean-100"
download_dir=downloads  # where downloads and the synthesised corpus go
embedded_size=demo      # embedded corpus size: tiny | demo
seed=0                  # embedded corpus seed
train_set=train         # data/<train_set>
valid_set=dev           # data/<valid_set>
test_sets="test"        # data/<set> for each
asr_config=conf/train_asr_lrsms_demo.yaml
inference_config=conf/decode_asr_cpu.yaml
asr_tag=                # exp/asr_<asr_tag>; default: the config's name
asr_args=               # extra options for asr_train, e.g. "--max_epoch 3"
lowrank_warmup_epochs=0 # >0: train the config's dense twin this many epochs, factorise it, go on in low rank
token_type=char         # char | bpe (SentencePiece)
nbpe=5000               # with --token_type bpe
bpemode=unigram         # unigram | bpe
speed_perturb_factors=  # e.g. "0.9 1.0 1.1"
inference_asr_model=valid.acc.ave.pth
min_wav_duration=0.1    # seconds, stage 4
max_wav_duration=20     # seconds, stage 4
expdir=exp
dumpdir=dump
datadir=data
python=                 # the Python with espnet_lowrank; default: .venv/bin/python beside run.sh, else python3

options_block() { sed -n '/^# --- options/,/^# --- end of options/p' "$0" | grep -E '^[a-z_]+='; }
option_names() { options_block | cut -d= -f1; }
help_message() { sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; echo "Options:"; options_block | sed 's/^/  --/'; }
# --- end of options ------------------------------------------------------------------------------

while [ $# -gt 0 ]; do
  case "$1" in
    --help|-h) help_message; exit 0 ;;
    --*=*) name=${1%%=*}; value=${1#*=}; shift ;;
    --*) [ $# -ge 2 ] || die "option $1 needs a value"; name=$1; value=$2; shift 2 ;;
    *) die "unexpected argument '$1' (options are --name value; see --help)" ;;
  esac
  name=${name#--}; name=${name//-/_}
  option_names | grep -qx "${name}" || die "unknown option --${name} (see --help)"
  printf -v "$name" '%s' "$value"
done

root=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
if [ -z "${python}" ]; then
  if [ -x "${root}/.venv/bin/python" ]; then python="${root}/.venv/bin/python"; else python=python3; fi
fi
export PYTHONPATH="${root}${PYTHONPATH:+:${PYTHONPATH}}"
[ -f "${asr_config}" ] || die "--asr_config ${asr_config} does not exist"
[ -z "${inference_config}" ] || [ -f "${inference_config}" ] || die "--inference_config ${inference_config} does not exist"
[ -n "${asr_tag}" ] || asr_tag=$(basename "${asr_config}" .yaml)

train_sp=${train_set}; [ -z "${speed_perturb_factors}" ] || train_sp=${train_set}_sp
if [ "${token_type}" = bpe ]; then token_dir=${datadir}/token_list/${bpemode}${nbpe}; else token_dir=${datadir}/token_list/char; fi
token_list=${token_dir}/tokens.txt
bpe_args=(); [ "${token_type}" != bpe ] || bpe_args=(--bpemodel "${token_dir}/bpe.model")
stats_dir=${expdir}/asr_stats_${token_type}$([ "${token_type}" != bpe ] || echo "${nbpe}")
asr_exp=${expdir}/asr_${asr_tag}
decode_dir=${asr_exp}/decode_$(basename "${inference_config:-default}" .yaml)_${inference_asr_model%.pth}

run_stage() { [ "$1" -ge "${stage}" ] && [ "$1" -le "${stop_stage}" ]; }
done_before() {  # done_before MARKER: skip (true) when the stage already finished
  if [ -f "$1" ]; then log "already done ($1); delete it to redo"; return 0; fi
  return 1
}
py() { "${python}" -m "$@"; }
need() {  # need STAGE PATH MADE_BY: stop early, naming what is missing and which stage makes it
  [ -e "$2" ] || die "stage $1 needs $2 (made by $3); run those stages first"
}

if run_stage 1; then
  log "stage 1: data (${corpus})"
  marker=${datadir}/.stage1.${corpus}.done
  if ! done_before "${marker}"; then
    data_sh=local/data.sh; [ -x "${data_sh}" ] || data_sh=${root}/local/data.sh  # a recipe's own, else ours
    "${data_sh}" --corpus "${corpus}" --datadir "${datadir}" --download_dir "${download_dir}" \
      --librispeech_root "${librispeech_root}" --librispeech_parts "${librispeech_parts}" \
      --embedded_size "${embedded_size}" --seed "${seed}" --nj "${nj}" --python "${python}"
    touch "${marker}"
  fi
fi

if run_stage 2 && [ -n "${speed_perturb_factors}" ]; then
  log "stage 2: speed perturbation ${speed_perturb_factors} of ${train_set}"
  marker=${datadir}/${train_sp}/.done
  if ! done_before "${marker}"; then
    py espnet_lowrank.stages.speed_perturb --data_dir "${datadir}/${train_set}" \
      --out_dir "${datadir}/${train_sp}" --audio_dir "${dumpdir}/speed_perturb" --factors ${speed_perturb_factors}
    touch "${marker}"
  fi
fi

if run_stage 3; then
  for set in "${train_sp}" "${valid_set}" ${test_sets}; do
    log "stage 3: format ${datadir}/${set} into ${dumpdir}/raw/org/${set}"
    done_before "${dumpdir}/raw/org/${set}/.done" && continue
    py espnet_lowrank.stages.dump format --data_dir "${datadir}/${set}" --out_dir "${dumpdir}/raw/org/${set}"
    touch "${dumpdir}/raw/org/${set}/.done"
  done
fi

if run_stage 4; then
  for set in "${train_sp}" "${valid_set}"; do
    log "stage 4: filter ${set} to ${min_wav_duration}-${max_wav_duration} s"
    done_before "${dumpdir}/raw/${set}/.done" && continue
    py espnet_lowrank.stages.dump filter --dump_dir "${dumpdir}/raw/org/${set}" --out_dir "${dumpdir}/raw/${set}" \
      --min_seconds "${min_wav_duration}" --max_seconds "${max_wav_duration}"
    touch "${dumpdir}/raw/${set}/.done"
  done
  for set in ${test_sets}; do  # test sets are scored whole
    [ -f "${dumpdir}/raw/${set}/.done" ] && continue
    rm -rf "${dumpdir}/raw/${set}.tmp" && cp -r "${dumpdir}/raw/org/${set}" "${dumpdir}/raw/${set}.tmp"
    rm -rf "${dumpdir}/raw/${set}" && mv "${dumpdir}/raw/${set}.tmp" "${dumpdir}/raw/${set}"
  done
fi

if run_stage 5; then
  log "stage 5: ${token_type} token list from ${train_set}"
  if ! done_before "${token_dir}/.done"; then
    need 5 "${dumpdir}/raw/${train_sp}/text" "stages 3-4"
    py espnet_lowrank.stages.token_list --text "${dumpdir}/raw/${train_sp}/text" --out_dir "${token_dir}" \
      --token_type "${token_type}" --nbpe "${nbpe}" --bpemode "${bpemode}"
    touch "${token_dir}/.done"
  fi
fi

asr_inputs() {  # the tokens and data that both ESPnet passes (stats, training) read
  echo --use_preprocessor true --token_type "${token_type}" --token_list "${token_list}" "${bpe_args[@]}" \
    --train_data_path_and_name_and_type "${dumpdir}/raw/${train_sp}/wav.scp,speech,sound" \
    --train_data_path_and_name_and_type "${dumpdir}/raw/${train_sp}/text,text,text" \
    --valid_data_path_and_name_and_type "${dumpdir}/raw/${valid_set}/wav.scp,speech,sound" \
    --valid_data_path_and_name_and_type "${dumpdir}/raw/${valid_set}/text,text,text"
}

if run_stage 10; then
  log "stage 10: collect feature statistics into ${stats_dir}"
  if ! done_before "${stats_dir}/.done"; then
    need 10 "${dumpdir}/raw/${train_sp}" "stages 3-4"
    need 10 "${token_list}" "stage 5"
    mkdir -p "${expdir}"
    py espnet_lowrank.bin.asr_train --collect_stats true --config "${asr_config}" --ngpu 0 \
      --num_workers "${nj}" $(asr_inputs) \
      --train_shape_file "${dumpdir}/raw/${train_sp}/utt2num_samples" \
      --valid_shape_file "${dumpdir}/raw/${valid_set}/utt2num_samples" \
      --output_dir "${stats_dir}" > "${expdir}/collect_stats.log" 2>&1 || die "stage 10 failed: see ${expdir}/collect_stats.log"
    vocab=$(wc -l < "${token_list}")
    for part in train valid; do
      awk -v N="${vocab}" '{ print $0 "," N }' "${stats_dir}/${part}/text_shape" > "${stats_dir}/${part}/text_shape.${token_type}"
    done
    touch "${stats_dir}/.done"
  fi
fi

train() {  # train CONFIG OUTPUT_DIR [asr_train options]: one resumable ESPnet training run
  local config=$1 out=$2; shift 2
  mkdir -p "${out}"
  distributed=false; [ "${ngpu}" -le 1 ] || distributed=true
  # --resume true: a killed run continues from ${out}/checkpoint.pth, finished epochs kept
  py espnet_lowrank.bin.asr_train --config "${config}" --output_dir "${out}" --resume true \
    --ngpu "${ngpu}" --multiprocessing_distributed "${distributed}" --num_workers "${nj}" $(asr_inputs) \
    --normalize global_mvn --normalize_conf "stats_file=${stats_dir}/train/feats_stats.npz" \
    --train_shape_file "${stats_dir}/train/speech_shape" --train_shape_file "${stats_dir}/train/text_shape.${token_type}" \
    --valid_shape_file "${stats_dir}/valid/speech_shape" --valid_shape_file "${stats_dir}/valid/text_shape.${token_type}" \
    --fold_length 80000 --fold_length 150 \
    ${asr_args} "$@" >> "${out}/train.log" 2>&1 || die "stage 11 failed: see ${out}/train.log"
}

if run_stage 11; then
  log "stage 11: train ${asr_exp} (${asr_config}; log: ${asr_exp}/train.log)"
  if ! done_before "${asr_exp}/.done"; then
    need 11 "${dumpdir}/raw/${train_sp}" "stages 3-4"
    need 11 "${stats_dir}/.done" "stage 10"
    phase_args=()
    lowrank_epochs=0  # stays 0 without a warm-up, and for a dense config (nothing to factorise)
    if [ "${lowrank_warmup_epochs}" -gt 0 ]; then
      lowrank_epochs=$(py espnet_lowrank.stages.warmup epochs --config "${asr_config}" \
        --warmup_epochs "${lowrank_warmup_epochs}" --asr_args "${asr_args}") || die "stage 11: see the error above"
    fi
    if [ "${lowrank_epochs}" -gt 0 ]; then
      # Pufferfish: dense twin for E epochs -> truncated SVD of its trained weights -> low rank,
      # fresh optimiser and LR warm-up. Each phase resumes on its own; the conversion is atomic.
      warmup_exp=${asr_exp}/dense_warmup
      if ! done_before "${warmup_exp}/.done"; then
        log "stage 11: dense warm-up, ${lowrank_warmup_epochs} epochs (log: ${warmup_exp}/train.log)"
        py espnet_lowrank.stages.warmup dense-config --config "${asr_config}" --out "${warmup_exp}/dense_config.yaml" \
          || die "stage 11: see the error above"
        train "${warmup_exp}/dense_config.yaml" "${warmup_exp}" --max_epoch "${lowrank_warmup_epochs}"
        touch "${warmup_exp}/.done"
      fi
      if [ ! -f "${warmup_exp}/lowrank_init.pth" ]; then
        log "stage 11: factorise the warmed-up dense model into ${warmup_exp}/lowrank_init.pth"
        py espnet_lowrank.cli convert --dense_config "${warmup_exp}/config.yaml" \
          --dense_model "${warmup_exp}/${lowrank_warmup_epochs}epoch.pth" --config "${asr_config}" \
          --out "${warmup_exp}/lowrank_init.pth" >> "${warmup_exp}/convert.log" 2>&1 \
          || die "stage 11: factorising failed: see ${warmup_exp}/convert.log"
      fi
      log "stage 11: low rank from the warm-up, ${lowrank_epochs} epochs"
      phase_args=(--init_param "${warmup_exp}/lowrank_init.pth" --max_epoch "${lowrank_epochs}")
    fi
    train "${asr_config}" "${asr_exp}" "${phase_args[@]}"
    touch "${asr_exp}/.done"
  fi
fi

if run_stage 12; then
  for set in ${test_sets}; do
    log "stage 12: decode ${set} with ${inference_asr_model} (${inference_nj} jobs)"
    done_before "${decode_dir}/${set}/.done" && continue
    need 12 "${dumpdir}/raw/${set}" "stages 3-4"
    py espnet_lowrank.stages.decode --data_dir "${dumpdir}/raw/${set}" --out_dir "${decode_dir}/${set}" \
      --asr_train_config "${asr_exp}/config.yaml" --asr_model_file "${asr_exp}/${inference_asr_model}" \
      ${inference_config:+--inference_config "${inference_config}"} --nj "${inference_nj}" --ngpu "$([ "${ngpu}" -gt 0 ] && echo 1 || echo 0)"
    touch "${decode_dir}/${set}/.done"
  done
fi

if run_stage 13; then
  log "stage 13: score into ${asr_exp}/RESULTS.md"
  py espnet_lowrank.stages.score --decode_dir "${decode_dir}" --data_root "${dumpdir}/raw" \
    --test_sets ${test_sets} --title "$(basename "${asr_exp}")" --out "${asr_exp}/RESULTS.md"
fi

if run_stage 14; then
  log "stage 14: pack ${asr_exp}/asr_model.zip"
  options=(--option "${asr_exp}/RESULTS.md" --option "${stats_dir}/train/feats_stats.npz")
  [ "${token_type}" != bpe ] || options+=(--option "${token_dir}/bpe.model")
  py espnet2.bin.pack asr --asr_train_config "${asr_exp}/config.yaml" \
    --asr_model_file "${asr_exp}/${inference_asr_model}" "${options[@]}" --outpath "${asr_exp}/asr_model.zip"
fi
log "finished stages ${stage}-${stop_stage}"
