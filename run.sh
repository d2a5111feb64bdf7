#!/usr/bin/env bash
# espnet-lowrank ASR pipeline, with ESPnet's stage numbers and option names.
#
#   ./run.sh                                   # the embedded corpus, end to end, on CPU
#   ./run.sh --stage 11 --stop_stage 13        # train, decode, score only
#   ./run.sh --asr_config conf/tuning/train_asr_conformer.yaml --asr_tag dense
#
# Stages: 1 data · 2 speed perturbation · 3 format/dump · 4 length filter · 5 token list
#         10 collect stats · 11 train · 12 decode · 13 score · 14 pack
# Each stage is a few lines here that call espnet_lowrank.stages.*; each leaves a marker (.done)
# recording its options and inputs, and is skipped when they are unchanged. Changed data stages and
# decoding are redone; training made from other inputs stops, saying what changed. Training (11)
# resumes from exp/.../checkpoint.pth; one run per exp/decode dir at a time.
set -euo pipefail
# Bash reads a script while it runs it: in braces, all of run.sh is read before anything runs, so a
# checkout updated (git pull) during a long run cannot change the run under it.
{

log() { echo "[$(date '+%F %T')] run.sh: $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# --- options (every variable below is an option: --name value) ---------------------------------
stage=1                 # first stage to run
stop_stage=14           # last stage to run
ngpu=0                  # GPUs for training (>1: ESPnet's DDP on this node); decoding uses 0 or 1
num_procs=1             # >1: training processes per node (torchrun; one GPU each with --ngpu, else CPU/gloo)
num_nodes=1             # nodes training together (see --print_launch_cmd)
node_rank=0             # this node's rank, 0..num_nodes-1
master_addr=localhost   # address of the node with --node_rank 0
master_port=29500       # a free port there
dist_backend=           # default: nccl with GPUs, gloo on CPU
print_launch_cmd=false  # true: print stage 11's commands for this run (to copy onto each node), then stop
nj=2                    # parallel jobs for data preparation and stats
inference_nj=2          # parallel decoding jobs per test set
job_threads=0           # threads per parallel torch process (decode jobs, training processes); 0: divide OMP_NUM_THREADS or the cores
corpus=embedded         # stage 1: embedded | librispeech | none (bring your own data/<set> dirs)
librispeech_root=       # an existing LibriSpeech/ directory: no download
librispeech_parts="dev-clean test-clean dev-other test-other train-clean-100"
download_dir=downloads  # where downloads and the synthesised corpus go
embedded_size=demo      # embedded corpus size: tiny | demo
corpus_seed=0           # the embedded corpus's synthesis seed
train_set=train         # data/<train_set>
valid_set=dev           # data/<valid_set>
test_sets="test"        # data/<set> for each
asr_config=conf/train_asr_lrsms_demo.yaml
inference_config=conf/decode_asr_cpu.yaml
asr_tag=                # exp/asr_<asr_tag>; default: the config's name
asr_args=               # extra options for asr_train, e.g. "--max_epoch 3"; given several times, all of them
cpu_bf16=               # a CPU training's precision (asr_train --cpu_bf16): false (fp32) | auto (bf16 where the CPU has it natively) | true; default: the config's (fp32 unless it says)
seed=                   # the training seed (asr_train --seed); default: the config's
lowrank_warmup_epochs=0 # >0: train the config's dense twin this many epochs, factorise it, go on in low rank
lowrank_param_ratio=    # with a warm-up: ranks chosen from its trained spectra for this share of the dense parameters (e.g. 0.5); empty: the config's
lowrank_allocator=energy # how that budget chooses them: energy | equal_energy | no_slower (see convert --allocator)
lowrank_asr_args=       # with a warm-up: extra asr_train options for its low-rank phase only, e.g. "--optim_conf lr=0.0012"; they add up
init_param=             # stage 11 starts from these weights, fresh optimiser (espnet-lowrank convert's output; path:src:dst too)
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
verbose=false           # true: Python tracebacks for expected errors too

options_block() { sed -n '/^# --- options/,/^# --- end of options/p' "$0" | grep -E '^[a-z][a-z0-9_]*='; }
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
  case ${name} in asr_args|lowrank_asr_args) value="${!name:+${!name} }${value}" ;; esac  # they add up
  printf -v "$name" '%s' "$value"
done

root=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
if [ -z "${python}" ]; then
  if [ -x "${root}/.venv/bin/python" ]; then python="${root}/.venv/bin/python"; else python=python3; fi
fi
export PYTHONPATH="${root}${PYTHONPATH:+:${PYTHONPATH}}"

# --- option checks: each failure is one line naming the option and the value ---------------------
# Here only what bash itself uses (numbers it compares, names in paths, its own switches); every other option
# is checked by the stage that uses it, against the values its code implements (stage 11: the allocators).
whole_number() {  # whole_number NAME MIN
  [[ "${!1}" =~ ^[0-9]+$ ]] && [ "${!1}" -ge "$2" ] || die "--$1 must be a whole number >= $2, not '${!1}'"
}
one_of() {  # one_of NAME CHOICE...
  local name=$1; shift
  [[ " $* " == *" ${!name} "* ]] || die "--${name} '${!name}' is unknown; choose one of: $*"
}
for name in stage stop_stage ngpu lowrank_warmup_epochs corpus_seed node_rank job_threads; do whole_number "${name}" 0; done
for name in nj inference_nj nbpe num_procs num_nodes master_port; do whole_number "${name}" 1; done
[ -z "${seed}" ] || whole_number seed 0
for name in min_wav_duration max_wav_duration; do
  [[ "${!name}" =~ ^[0-9]*\.?[0-9]+$ ]] || die "--${name} must be a number of seconds, not '${!name}'"
done
[ "${stage}" -le "${stop_stage}" ] || die "--stage ${stage} comes after --stop_stage ${stop_stage}: nothing to run"
one_of token_type char bpe
one_of bpemode unigram bpe
one_of corpus embedded librispeech none
one_of embedded_size tiny demo
one_of verbose true false
one_of print_launch_cmd true false
[ -z "${cpu_bf16}" ] || one_of cpu_bf16 false auto true
[ "${verbose}" = false ] || export ESPNET_LOWRANK_VERBOSE=1
[ -f "${asr_config}" ] || die "--asr_config ${asr_config} does not exist"
[ -z "${init_param}" ] || [ -f "${init_param%%:*}" ] || die "--init_param: ${init_param%%:*} does not exist"
[ -z "${inference_config}" ] || [ -f "${inference_config}" ] || die "--inference_config ${inference_config} does not exist"
[ -n "${asr_tag}" ] || asr_tag=$(basename "${asr_config}" .yaml)
[[ "${asr_tag}" =~ ^[A-Za-z0-9._+-]+$ ]] || die "--asr_tag '${asr_tag}' may hold only letters, digits and . _ + - (it names exp/asr_<tag>)"
"${python}" --version > /dev/null 2>&1 || die "--python ${python} does not run"

train_sp=${train_set}; [ -z "${speed_perturb_factors}" ] || train_sp=${train_set}_sp
# token lists and stats belong to the training set they are made from
if [ "${token_type}" = bpe ]; then token_name=${bpemode}${nbpe}; else token_name=char; fi
token_dir=${datadir}/token_list/${train_sp}/${token_name}
token_list=${token_dir}/tokens.txt
stats_dir=${expdir}/asr_stats_${train_sp}_${token_name}
asr_exp=${expdir}/asr_${asr_tag}
inference_tag=$(basename "${inference_config:-default}" .yaml)
decode_dir=${asr_exp}/decode_${inference_tag#decode_}_${inference_asr_model%.pth}

run_stage() { [ "$1" -ge "${stage}" ] && [ "$1" -le "${stop_stage}" ]; }
py() { "${python}" -m "$@"; }
# espnet 202511 prints a notice about Flash Attention each time its ASR task loads
py_asr() { "${python}" -m "$@" 2> >(grep --line-buffered -v "Flash Attention" >&2); }
# stage_needed STAGE MARKER [--option NAME=VALUE | --input PATH]...: true when the stage must run. Its
# marker records the options and inputs it was made from; changed ones are redone, saying what changed.
stage_needed() {
  local stage_name=$1 marker=$2 rc=0; shift 2
  py espnet_lowrank.stages.marker check "${marker}" --stage "${stage_name}" --on_change redo "$@" || rc=$?
  case ${rc} in 0) return 1 ;; 3) return 0 ;; *) exit 1 ;; esac
}
# stage_finished MARKER [--option ... | --input ...]: record what the stage was made from
stage_finished() { py espnet_lowrank.stages.marker record "$@"; }
need() {  # need STAGE PATH MADE_BY: stop early, naming what is missing and which stage makes it
  [ -e "$2" ] || die "stage $1 needs $2 (made by $3); run those stages first"
}

# what stages 10 and 11 read, and how stage 11 trains (espnet_lowrank.stages.train)
asr_inputs=(--token_type "${token_type}" --token_list "${token_list}" --nj "${nj}"
  --train_dir "${dumpdir}/raw/${train_sp}" --valid_dir "${dumpdir}/raw/${valid_set}")
[ "${token_type}" != bpe ] || asr_inputs+=(--bpemodel "${token_dir}/bpe.model")
training=(--asr_config "${asr_config}" --asr_exp "${asr_exp}" --stats_dir "${stats_dir}" "${asr_inputs[@]}"
  --cpu_bf16 "${cpu_bf16}" --asr_args="${asr_args}" --seed "${seed}" --lowrank_warmup_epochs "${lowrank_warmup_epochs}"
  --lowrank_param_ratio "${lowrank_param_ratio}" --lowrank_allocator "${lowrank_allocator}"
  --lowrank_asr_args="${lowrank_asr_args}"
  --init_param "${init_param}" --job_threads "${job_threads}" --ngpu "${ngpu}" --num_procs "${num_procs}"
  --num_nodes "${num_nodes}" --node_rank "${node_rank}" --master_addr "${master_addr}"
  --master_port "${master_port}" --dist_backend "${dist_backend}")
if [ "${print_launch_cmd}" = true ]; then py_asr espnet_lowrank.stages.train print "${training[@]}"; exit; fi
if [ "${stage}" -le 12 ] && [ "${stop_stage}" -ge 11 ]; then  # refused before anything starts
  py_asr espnet_lowrank.stages.train check "${training[@]}"
fi

# stages 1-5 write the recipe dir's shared data: one run at a time (flock: the kernel frees it when its
# holder dies, so there is no stale lock and no reused PID); released before training starts
if [ "${stage}" -le 5 ]; then
  mkdir -p "${datadir}"
  data_lock=${datadir}/.lock
  exec 9>>"${data_lock}"
  flock -n 9 || die "${datadir} is being prepared by another run (PID $(cat "${data_lock}" 2> /dev/null || echo '?')); wait for it to finish"
  echo $$ > "${data_lock}"
fi

if run_stage 1; then
  log "stage 1: data (${corpus})"
  marker=${datadir}/.stage1.${corpus}.done
  data_options=(--option "corpus=${corpus}" --option "librispeech_root=${librispeech_root}"
    --option "librispeech_parts=${librispeech_parts}" --option "embedded_size=${embedded_size}" --option "corpus_seed=${corpus_seed}")
  # the embedded corpus gained its eval set later: a data dir made before it is completed once
  [ "${corpus}" != embedded ] || data_options+=(--option "embedded_sets=train dev test eval")
  if stage_needed 1 "${marker}" "${data_options[@]}"; then
    data_sh=local/data.sh; [ -x "${data_sh}" ] || data_sh=${root}/local/data.sh  # a recipe's own, else ours
    "${data_sh}" --corpus "${corpus}" --datadir "${datadir}" --download_dir "${download_dir}" \
      --librispeech_root "${librispeech_root}" --librispeech_parts "${librispeech_parts}" \
      --embedded_size "${embedded_size}" --seed "${corpus_seed}" --nj "${nj}" --python "${python}"
    stage_finished "${marker}" "${data_options[@]}"
  fi
fi

if run_stage 2 && [ -n "${speed_perturb_factors}" ]; then
  log "stage 2: speed perturbation ${speed_perturb_factors} of ${train_set}"
  marker=${datadir}/${train_sp}/.done
  inputs=(--option "speed_perturb_factors=${speed_perturb_factors}" --input "${datadir}/${train_set}")
  if stage_needed 2 "${marker}" "${inputs[@]}"; then
    py espnet_lowrank.stages.speed_perturb --data_dir "${datadir}/${train_set}" \
      --out_dir "${datadir}/${train_sp}" --audio_dir "${dumpdir}/speed_perturb" --factors ${speed_perturb_factors}
    stage_finished "${marker}" "${inputs[@]}"
  fi
fi

if run_stage 3; then
  for set in "${train_sp}" "${valid_set}" ${test_sets}; do
    log "stage 3: format ${datadir}/${set} into ${dumpdir}/raw/org/${set}"
    marker=${dumpdir}/raw/org/${set}/.done
    stage_needed 3 "${marker}" --input "${datadir}/${set}" || continue
    py espnet_lowrank.stages.dump format --data_dir "${datadir}/${set}" --out_dir "${dumpdir}/raw/org/${set}" \
      --nj "${nj}"
    stage_finished "${marker}" --input "${datadir}/${set}"
  done
fi

if run_stage 4; then
  for set in "${train_sp}" "${valid_set}"; do
    log "stage 4: filter ${set} to ${min_wav_duration}-${max_wav_duration} s"
    marker=${dumpdir}/raw/${set}/.done
    inputs=(--option "min_wav_duration=${min_wav_duration}" --option "max_wav_duration=${max_wav_duration}"
      --input "${dumpdir}/raw/org/${set}")
    stage_needed 4 "${marker}" "${inputs[@]}" || continue
    py espnet_lowrank.stages.dump filter --dump_dir "${dumpdir}/raw/org/${set}" --out_dir "${dumpdir}/raw/${set}" \
      --min_seconds "${min_wav_duration}" --max_seconds "${max_wav_duration}"
    stage_finished "${marker}" "${inputs[@]}"
  done
  for set in ${test_sets}; do  # test sets are scored whole
    marker=${dumpdir}/raw/${set}/.done
    stage_needed 4 "${marker}" --input "${dumpdir}/raw/org/${set}" || continue
    rm -rf "${dumpdir}/raw/${set}.tmp" && cp -r "${dumpdir}/raw/org/${set}" "${dumpdir}/raw/${set}.tmp"
    rm -rf "${dumpdir}/raw/${set}" && mv "${dumpdir}/raw/${set}.tmp" "${dumpdir}/raw/${set}"
    stage_finished "${marker}" --input "${dumpdir}/raw/org/${set}"
  done
fi

if run_stage 5; then
  log "stage 5: ${token_type} token list from ${train_sp} into ${token_dir}"
  need 5 "${dumpdir}/raw/${train_sp}/text" "stages 3-4"
  inputs=(--option "token_type=${token_type}" --input "${dumpdir}/raw/${train_sp}/text")
  [ "${token_type}" != bpe ] || inputs+=(--option "nbpe=${nbpe}" --option "bpemode=${bpemode}")
  if stage_needed 5 "${token_dir}/.done" "${inputs[@]}"; then
    py espnet_lowrank.stages.token_list --text "${dumpdir}/raw/${train_sp}/text" --out_dir "${token_dir}" \
      --token_type "${token_type}" --nbpe "${nbpe}" --bpemode "${bpemode}"
    stage_finished "${token_dir}/.done" "${inputs[@]}"
  fi
fi

exec 9>&-  # the data lock, if this run took it

data_inputs=(--input "${dumpdir}/raw/${train_sp}" --input "${dumpdir}/raw/${valid_set}" --input "${token_dir}")
if run_stage 10; then
  log "stage 10: collect feature statistics into ${stats_dir}"
  need 10 "${dumpdir}/raw/${train_sp}" "stages 3-4"
  need 10 "${token_list}" "stage 5"
  if stage_needed 10 "${stats_dir}/.done" "${data_inputs[@]}"; then
    py espnet_lowrank.stages.stats "${asr_inputs[@]}" --config "${asr_config}" --stats_dir "${stats_dir}" \
      --log "${expdir}/collect_stats.log"
    stage_finished "${stats_dir}/.done" "${data_inputs[@]}"
  fi
fi

if run_stage 11; then  # plain, or a dense warm-up then low rank; resumes after a kill in every phase
  need 11 "${dumpdir}/raw/${train_sp}" "stages 3-4"
  need 11 "${stats_dir}/.done" "stage 10"
  py_asr espnet_lowrank.stages.train run "${training[@]}"
fi

if run_stage 12; then
  for set in ${test_sets}; do
    log "stage 12: decode ${set} with ${inference_asr_model} (${inference_nj} jobs)"
    need 12 "${dumpdir}/raw/${set}" "stages 3-4"
    need 12 "${asr_exp}/${inference_asr_model}" "stage 11"
    py espnet_lowrank.stages.decode --data_dir "${dumpdir}/raw/${set}" --out_dir "${decode_dir}/${set}" \
      --asr_train_config "${asr_exp}/config.yaml" --asr_model_file "${asr_exp}/${inference_asr_model}" \
      ${inference_config:+--inference_config "${inference_config}"} --nj "${inference_nj}" \
      --job_threads "${job_threads}" --ngpu "$([ "${ngpu}" -gt 0 ] && echo 1 || echo 0)"
  done
fi

if run_stage 13; then
  log "stage 13: score into ${asr_exp}/RESULTS.md"
  py espnet_lowrank.stages.score --decode_dir "${decode_dir}" --data_root "${dumpdir}/raw" \
    --test_sets ${test_sets} --title "$(basename "${asr_exp}")" --out "${asr_exp}/RESULTS.md" \
    --model "${inference_asr_model}" ${inference_config:+--inference_config "${inference_config}"}
fi

if run_stage 14; then
  log "stage 14: pack ${asr_exp}/asr_model.zip"
  options=(--option "${asr_exp}/RESULTS.md" --option "${stats_dir}/train/feats_stats.npz")
  [ "${token_type}" != bpe ] || options+=(--option "${token_dir}/bpe.model")
  partial=${asr_exp}/.asr_model.partial.zip  # renamed into place whole: a stopped run leaves no half a pack
  py espnet2.bin.pack asr --asr_train_config "${asr_exp}/config.yaml" \
    --asr_model_file "${asr_exp}/${inference_asr_model}" "${options[@]}" --outpath "${partial}"
  mv -f "${partial}" "${asr_exp}/asr_model.zip"
fi
log "finished stages ${stage}-${stop_stage}"
exit
}
