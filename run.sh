#!/usr/bin/env bash
# espnet-lowrank ASR pipeline, with ESPnet's stage numbers and option names.
#
#   ./run.sh                                   # the embedded corpus, end to end, on CPU
#   ./run.sh --stage 11 --stop_stage 13        # train, decode, score only
#   ./run.sh --asr_config conf/tuning/train_asr_conformer.yaml --asr_tag dense
#
# Stages: 1 data · 2 speed perturbation · 3 format/dump · 4 length filter · 5 token list
#         10 collect stats · 11 train · 12 decode · 13 score · 14 pack
# Each stage leaves a marker (.done) recording its options and inputs, and is skipped when they are
# unchanged. Changed data stages and decoding are redone; training made from other inputs stops, saying
# what changed. Training (11) resumes from exp/.../checkpoint.pth; one run per exp/decode dir at a time.
set -euo pipefail

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
print_launch_cmd=false  # true: print stage 11's torchrun and Slurm commands for this run, then stop
nj=2                    # parallel jobs for data preparation and stats
inference_nj=2          # parallel decoding jobs per test set
job_threads=0           # threads per parallel torch process (decode jobs, training processes); 0: divide OMP_NUM_THREADS or the cores
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

# --- option checks: each failure is one line naming the option and the value ---------------------
whole_number() {  # whole_number NAME MIN
  [[ "${!1}" =~ ^[0-9]+$ ]] && [ "${!1}" -ge "$2" ] || die "--$1 must be a whole number >= $2, not '${!1}'"
}
one_of() {  # one_of NAME CHOICE...
  local name=$1; shift
  [[ " $* " == *" ${!name} "* ]] || die "--${name} '${!name}' is unknown; choose one of: $*"
}
for name in stage stop_stage ngpu lowrank_warmup_epochs seed node_rank job_threads; do whole_number "${name}" 0; done
for name in nj inference_nj nbpe num_procs num_nodes master_port; do whole_number "${name}" 1; done
[ "${node_rank}" -lt "${num_nodes}" ] || die "--node_rank ${node_rank} must be below --num_nodes ${num_nodes}"
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
[ -n "${dist_backend}" ] || { dist_backend=gloo; [ "${ngpu}" -eq 0 ] || dist_backend=nccl; }
one_of dist_backend gloo nccl
world_size=$((num_procs * num_nodes))
if [ "${num_procs}" -gt 1 ] && [ "${ngpu}" -gt 0 ] && [ "${ngpu}" -ne "${num_procs}" ]; then
  die "--ngpu ${ngpu} with --num_procs ${num_procs}: each training process takes one GPU, so give --ngpu ${num_procs}"
fi
[ "${dist_backend}" = gloo ] || [ "${ngpu}" -gt 0 ] || die "--dist_backend nccl needs GPUs (--ngpu > 0); CPU processes use gloo"
[ "${verbose}" = false ] || export ESPNET_LOWRANK_VERBOSE=1
[ -f "${asr_config}" ] || die "--asr_config ${asr_config} does not exist"
if [ -n "${init_param}" ]; then
  [ -f "${init_param%%:*}" ] || die "--init_param: ${init_param%%:*} does not exist"
  [ "${lowrank_warmup_epochs}" -eq 0 ] || die "--init_param and --lowrank_warmup_epochs both set the starting weights: choose one"
fi
[ -z "${inference_config}" ] || [ -f "${inference_config}" ] || die "--inference_config ${inference_config} does not exist"
[ -n "${asr_tag}" ] || asr_tag=$(basename "${asr_config}" .yaml)
[[ "${asr_tag}" =~ ^[A-Za-z0-9._+-]+$ ]] || die "--asr_tag '${asr_tag}' may hold only letters, digits and . _ + - (it names exp/asr_<tag>)"
"${python}" --version > /dev/null 2>&1 || die "--python ${python} does not run"
if [ "${ngpu}" -gt 0 ] && [ "${stop_stage}" -ge 11 ] && [ "${stage}" -le 12 ]; then
  gpus=$("${python}" -c 'import torch; print(torch.cuda.device_count())' 2>/dev/null) || gpus=0
  [ "${ngpu}" -le "${gpus}" ] || die "--ngpu ${ngpu}: torch sees ${gpus} GPU(s) on this machine (--ngpu 0 trains on CPU)"
fi
if [ "${world_size}" -gt 1 ] && [ "${stage}" -le 11 ] && [ "${stop_stage}" -ge 11 ]; then
  "${python}" -m espnet_lowrank.stages.train_options check-distributed --config "${asr_config}" --asr_args="${asr_args}" \
    --world_size "${world_size}" 2> >(grep -v "Flash Attention" >&2) || exit 1
fi

train_sp=${train_set}; [ -z "${speed_perturb_factors}" ] || train_sp=${train_set}_sp
# token lists and stats belong to the training set they are made from
if [ "${token_type}" = bpe ]; then token_name=${bpemode}${nbpe}; else token_name=char; fi
token_dir=${datadir}/token_list/${train_sp}/${token_name}
token_list=${token_dir}/tokens.txt
bpe_args=(); [ "${token_type}" != bpe ] || bpe_args=(--bpemodel "${token_dir}/bpe.model")
stats_dir=${expdir}/asr_stats_${train_sp}_${token_name}
asr_exp=${expdir}/asr_${asr_tag}
decode_dir=${asr_exp}/decode_$(basename "${inference_config:-default}" .yaml)_${inference_asr_model%.pth}

run_stage() { [ "$1" -ge "${stage}" ] && [ "$1" -le "${stop_stage}" ]; }
py() { "${python}" -m "$@"; }
# stage_needed STAGE redo|stop MARKER [--option NAME=VALUE | --input PATH]...: true when the stage must
# run. Its marker records the options and inputs it was made from; changed ones are redone (redo) or
# stop run.sh with one line saying what changed (stop, for training).
stage_needed() {
  local stage_name=$1 policy=$2 marker=$3 rc=0; shift 3
  py espnet_lowrank.stages.marker check "${marker}" --stage "${stage_name}" --on_change "${policy}" \
    --hint "${stop_hint:-}" "$@" || rc=$?
  case ${rc} in 0) return 1 ;; 3) return 0 ;; *) exit 1 ;; esac
}
# stage_finished MARKER [--started] [--option ... | --input ...]: record what the stage was made from
stage_finished() { py espnet_lowrank.stages.marker record "$@"; }
# take_lock DIR: one run.sh at a time per experiment or decode dir; a dead run's lock is taken over
locks=()
trap 'rm -f "${locks[@]}"' EXIT
take_lock() {
  local lock=$1/.lock owner
  mkdir -p "$1"
  until ( set -o noclobber; echo "$$" > "${lock}" ) 2> /dev/null; do
    owner=$(cat "${lock}" 2> /dev/null || true)
    [ "${owner}" != "$$" ] || return 0
    if [ -n "${owner}" ] && kill -0 "${owner}" 2> /dev/null; then
      die "$1 is in use by another run.sh (PID ${owner}); wait for it to finish or stop it"
    fi
    log "taking over ${lock} from PID ${owner:-?}, which is gone"
    rm -f "${lock}"
  done
  locks+=("${lock}")
}
need() {  # need STAGE PATH MADE_BY: stop early, naming what is missing and which stage makes it
  [ -e "$2" ] || die "stage $1 needs $2 (made by $3); run those stages first"
}

asr_inputs() {  # the tokens and data that both ESPnet passes (stats, training) read
  echo --use_preprocessor true --token_type "${token_type}" --token_list "${token_list}" "${bpe_args[@]}" \
    --train_data_path_and_name_and_type "${dumpdir}/raw/${train_sp}/wav.scp,speech,sound" \
    --train_data_path_and_name_and_type "${dumpdir}/raw/${train_sp}/text,text,text" \
    --valid_data_path_and_name_and_type "${dumpdir}/raw/${valid_set}/wav.scp,speech,sound" \
    --valid_data_path_and_name_and_type "${dumpdir}/raw/${valid_set}/text,text,text"
}
data_inputs=(--input "${dumpdir}/raw/${train_sp}" --input "${dumpdir}/raw/${valid_set}" --input "${token_dir}")

asr_train_args() {  # asr_train_args CONFIG OUTPUT_DIR [asr_train options]: stage 11's asr_train options
  local config=$1 out=$2; shift 2
  echo --config "${config}" --output_dir "${out}" --resume true --num_workers "${nj}" $(asr_inputs) \
    --normalize global_mvn --normalize_conf "stats_file=${stats_dir}/train/feats_stats.npz" \
    --train_shape_file "${stats_dir}/train/speech_shape" --train_shape_file "${stats_dir}/train/text_shape.${token_type}" \
    --valid_shape_file "${stats_dir}/valid/speech_shape" --valid_shape_file "${stats_dir}/valid/text_shape.${token_type}" \
    --fold_length 80000 --fold_length 150 ${asr_args} "$@"
}

# How stage 11 starts asr_train: as it is (ESPnet's own DDP for --ngpu > 1), or --num_procs processes per
# node through torchrun, each with one GPU (NCCL) or on CPU (gloo).
if [ "${world_size}" -gt 1 ]; then
  launcher=("${python}" -m torch.distributed.run --nnodes "${num_nodes}" --node_rank "${node_rank}"
    --nproc_per_node "${num_procs}" --master_addr "${master_addr}" --master_port "${master_port}"
    -m espnet_lowrank.bin.asr_train)
  process_args=(--ngpu "$([ "${ngpu}" -gt 0 ] && echo 1 || echo 0)" --dist_backend "${dist_backend}"
    --multiprocessing_distributed false)
else
  launcher=("${python}" -m espnet_lowrank.bin.asr_train)
  process_args=(--ngpu "${ngpu}" --multiprocessing_distributed "$([ "${ngpu}" -gt 1 ] && echo true || echo false)")
fi
# the training processes on this node (ESPnet starts one per GPU itself for --ngpu > 1) share its threads
train_procs=${num_procs}; [ "${world_size}" -gt 1 ] || [ "${ngpu}" -le 1 ] || train_procs=${ngpu}

if [ "${print_launch_cmd}" = true ]; then  # stage 11 of this run on several nodes, to copy
  [ "${world_size}" -gt 1 ] || die "--print_launch_cmd needs --num_procs or --num_nodes above 1"
  [ "${lowrank_warmup_epochs}" -eq 0 ] || die "--print_launch_cmd prints one training run, but --lowrank_warmup_epochs trains two phases: set it to 0"
  node_words=$(printf ' %q' "${launcher[@]:0:3}" --nnodes "${num_nodes}")
  rest_words=$(printf ' %q' --nproc_per_node "${num_procs}" --master_addr "${master_addr}" \
    --master_port "${master_port}" "${launcher[@]:13}" $(asr_train_args "${asr_config}" "${asr_exp}") "${process_args[@]}")
  recover=$(printf '%q ' "${python}" -m espnet_lowrank.checkpoints "${asr_exp}")
  echo "# after stages 1-10, with this directory on storage every node sees; on node i of ${num_nodes}, NODE_RANK=i:"
  echo "cd $(printf '%q' "${PWD}") && ${recover}&&${node_words} --node_rank \"\${NODE_RANK}\"${rest_words}"
  echo "# or, from a Slurm allocation of ${num_nodes} node(s), one task per node (the first node is the master):"
  slurm_words=${rest_words/--master_addr $(printf '%q' "${master_addr}")/--master_addr \"\$(scontrol show hostnames \"\$SLURM_JOB_NODELIST\" | head -n 1)\"}
  echo "srun --nodes ${num_nodes} --ntasks-per-node 1 --chdir $(printf '%q' "${PWD}") bash -c '${recover//\'/\'\\\'\'}&&${node_words//\'/\'\\\'\'} --node_rank \"\$SLURM_NODEID\"${slurm_words//\'/\'\\\'\'}'"
  exit 0
fi

if run_stage 1; then
  log "stage 1: data (${corpus})"
  marker=${datadir}/.stage1.${corpus}.done
  data_options=(--option "corpus=${corpus}" --option "librispeech_root=${librispeech_root}"
    --option "librispeech_parts=${librispeech_parts}" --option "embedded_size=${embedded_size}" --option "seed=${seed}")
  if stage_needed 1 redo "${marker}" "${data_options[@]}"; then
    data_sh=local/data.sh; [ -x "${data_sh}" ] || data_sh=${root}/local/data.sh  # a recipe's own, else ours
    "${data_sh}" --corpus "${corpus}" --datadir "${datadir}" --download_dir "${download_dir}" \
      --librispeech_root "${librispeech_root}" --librispeech_parts "${librispeech_parts}" \
      --embedded_size "${embedded_size}" --seed "${seed}" --nj "${nj}" --python "${python}"
    stage_finished "${marker}" "${data_options[@]}"
  fi
fi

if run_stage 2 && [ -n "${speed_perturb_factors}" ]; then
  log "stage 2: speed perturbation ${speed_perturb_factors} of ${train_set}"
  marker=${datadir}/${train_sp}/.done
  inputs=(--option "speed_perturb_factors=${speed_perturb_factors}" --input "${datadir}/${train_set}")
  if stage_needed 2 redo "${marker}" "${inputs[@]}"; then
    py espnet_lowrank.stages.speed_perturb --data_dir "${datadir}/${train_set}" \
      --out_dir "${datadir}/${train_sp}" --audio_dir "${dumpdir}/speed_perturb" --factors ${speed_perturb_factors}
    stage_finished "${marker}" "${inputs[@]}"
  fi
fi

if run_stage 3; then
  for set in "${train_sp}" "${valid_set}" ${test_sets}; do
    log "stage 3: format ${datadir}/${set} into ${dumpdir}/raw/org/${set}"
    marker=${dumpdir}/raw/org/${set}/.done
    stage_needed 3 redo "${marker}" --input "${datadir}/${set}" || continue
    py espnet_lowrank.stages.dump format --data_dir "${datadir}/${set}" --out_dir "${dumpdir}/raw/org/${set}"
    stage_finished "${marker}" --input "${datadir}/${set}"
  done
fi

if run_stage 4; then
  for set in "${train_sp}" "${valid_set}"; do
    log "stage 4: filter ${set} to ${min_wav_duration}-${max_wav_duration} s"
    marker=${dumpdir}/raw/${set}/.done
    inputs=(--option "min_wav_duration=${min_wav_duration}" --option "max_wav_duration=${max_wav_duration}"
      --input "${dumpdir}/raw/org/${set}")
    stage_needed 4 redo "${marker}" "${inputs[@]}" || continue
    py espnet_lowrank.stages.dump filter --dump_dir "${dumpdir}/raw/org/${set}" --out_dir "${dumpdir}/raw/${set}" \
      --min_seconds "${min_wav_duration}" --max_seconds "${max_wav_duration}"
    stage_finished "${marker}" "${inputs[@]}"
  done
  for set in ${test_sets}; do  # test sets are scored whole
    marker=${dumpdir}/raw/${set}/.done
    stage_needed 4 redo "${marker}" --input "${dumpdir}/raw/org/${set}" || continue
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
  if stage_needed 5 redo "${token_dir}/.done" "${inputs[@]}"; then
    py espnet_lowrank.stages.token_list --text "${dumpdir}/raw/${train_sp}/text" --out_dir "${token_dir}" \
      --token_type "${token_type}" --nbpe "${nbpe}" --bpemode "${bpemode}"
    stage_finished "${token_dir}/.done" "${inputs[@]}"
  fi
fi

if run_stage 10; then
  log "stage 10: collect feature statistics into ${stats_dir}"
  need 10 "${dumpdir}/raw/${train_sp}" "stages 3-4"
  need 10 "${token_list}" "stage 5"
  if stage_needed 10 redo "${stats_dir}/.done" "${data_inputs[@]}"; then
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
    stage_finished "${stats_dir}/.done" "${data_inputs[@]}"
  fi
fi

train() {  # train CONFIG OUTPUT_DIR [asr_train options]: one resumable ESPnet training run
  local config=$1 out=$2 progress; shift 2
  mkdir -p "${out}" && touch "${out}/train.log"
  local extra=()
  if [ "${world_size}" -gt 1 ]; then
    py espnet_lowrank.checkpoints "${out}" 2>> "${out}/train.log" || exit 1  # once, not in every process
    # a guide whose weight reached 0 takes no part in the loss, which DDP must be told
    ! grep -q "lowrank_guide" "${config}" || extra=(--unused_parameters true)
  fi
  # the console shows each epoch as it ends; everything else goes to train.log
  "${python}" -m espnet_lowrank.stages.progress --log "${out}/train.log" --config "${config}" \
    --asr_args="${asr_args} $*" --while_alive $$ &
  progress=$!
  local threads=()
  # several processes divide the threads; one process takes --job_threads if given (runs side by side)
  if [ "${train_procs}" -gt 1 ] || [ "${job_threads}" -gt 0 ]; then
    threads=(env "OMP_NUM_THREADS=$(py espnet_lowrank.threads --jobs "${train_procs}" --job_threads "${job_threads}")") || exit 1
    log "stage 11: ${train_procs} training process(es), ${threads[1]#*=} thread(s) each"
  fi
  # --resume true: a killed run continues from ${out}/checkpoint.pth, finished epochs kept
  "${threads[@]}" "${launcher[@]}" $(asr_train_args "${config}" "${out}" "$@") "${process_args[@]}" "${extra[@]}" >> "${out}/train.log" 2>&1 || {
    kill "${progress}" 2> /dev/null || true
    die "stage 11 failed: $(grep -E '^(ERROR|[A-Za-z.]*(Error|Exception))|^[A-Za-z_.]+: error: ' "${out}/train.log" | tail -1) (see ${out}/train.log)"
  }
  sleep 1  # the last epoch's line reaches the console
  kill "${progress}" 2> /dev/null || true
}

if run_stage 11; then
  log "stage 11: train ${asr_exp} (${asr_config}; log: ${asr_exp}/train.log)"
  need 11 "${dumpdir}/raw/${train_sp}" "stages 3-4"
  need 11 "${stats_dir}/.done" "stage 10"
  take_lock "${asr_exp}"
  train_inputs=(--option "asr_args=${asr_args}" --option "lowrank_warmup_epochs=${lowrank_warmup_epochs}"
    --input "${asr_config}" --input "${stats_dir}/train" "${data_inputs[@]}")
  # recorded only when set, so that runs from before the option was added keep their markers
  [ -z "${init_param}" ] || train_inputs+=(--option "init_param=${init_param}" --input "${init_param%%:*}")
  stop_hint="Use another --asr_tag to train from them, or delete ${asr_exp} to train again."
  if stage_needed 11 stop "${asr_exp}/.done" "${train_inputs[@]}"; then
    # a bad option, group or rank stops here in one line, not in train.log
    py espnet_lowrank.model_config "${asr_config}" --token_list "${token_list}" 2> >(grep -v "Flash Attention" >&2) || exit 1
    stage_finished "${asr_exp}/.done" --started "${train_inputs[@]}"
    phase_args=(); [ -z "${init_param}" ] || phase_args=(--init_param "${init_param}")
    lowrank_epochs=0  # stays 0 without a warm-up, and for a dense config (nothing to factorise)
    if [ "${lowrank_warmup_epochs}" -gt 0 ]; then
      lowrank_epochs=$(py espnet_lowrank.stages.warmup epochs --config "${asr_config}" \
        --warmup_epochs "${lowrank_warmup_epochs}" --asr_args="${asr_args}") || exit 1
    fi
    if [ "${lowrank_epochs}" -gt 0 ]; then
      # Pufferfish: dense twin for E epochs -> truncated SVD of its trained weights -> low rank,
      # fresh optimiser and LR warm-up. Each phase resumes on its own; the conversion is atomic.
      # (The whole exp dir's marker guards their inputs.)
      warmup_exp=${asr_exp}/dense_warmup
      if [ ! -f "${warmup_exp}/.done" ]; then
        log "stage 11: dense warm-up, ${lowrank_warmup_epochs} epochs (log: ${warmup_exp}/train.log)"
        py espnet_lowrank.stages.warmup dense-config --config "${asr_config}" --out "${warmup_exp}/dense_config.yaml" \
          || exit 1
        train "${warmup_exp}/dense_config.yaml" "${warmup_exp}" --max_epoch "${lowrank_warmup_epochs}"
        touch "${warmup_exp}/.done"
      fi
      if [ ! -f "${warmup_exp}/lowrank_init.pth" ]; then
        log "stage 11: factorise the warmed-up dense model into ${warmup_exp}/lowrank_init.pth"
        py espnet_lowrank.cli convert --dense_config "${warmup_exp}/config.yaml" \
          --dense_model "${warmup_exp}/${lowrank_warmup_epochs}epoch.pth" --config "${asr_config}" \
          --out "${warmup_exp}/lowrank_init.pth" >> "${warmup_exp}/convert.log" 2>&1 \
          || die "stage 11: factorising failed: $(tail -1 "${warmup_exp}/convert.log") (see ${warmup_exp}/convert.log)"
      fi
      log "stage 11: low rank from the warm-up, ${lowrank_epochs} epochs"
      phase_args=(--init_param "${warmup_exp}/lowrank_init.pth" --max_epoch "${lowrank_epochs}")
    fi
    train "${asr_config}" "${asr_exp}" "${phase_args[@]}"
    stage_finished "${asr_exp}/.done" "${train_inputs[@]}"
  fi
fi

if run_stage 12; then
  for set in ${test_sets}; do
    log "stage 12: decode ${set} with ${inference_asr_model} (${inference_nj} jobs)"
    need 12 "${dumpdir}/raw/${set}" "stages 3-4"
    need 12 "${asr_exp}/${inference_asr_model}" "stage 11"
    take_lock "${decode_dir}/${set}"
    inputs=(--input "${asr_exp}/${inference_asr_model}" --input "${asr_exp}/config.yaml" --input "${dumpdir}/raw/${set}")
    [ -z "${inference_config}" ] || inputs+=(--input "${inference_config}")
    stage_needed 12 redo "${decode_dir}/${set}/.done" "${inputs[@]}" || continue
    py espnet_lowrank.stages.decode --data_dir "${dumpdir}/raw/${set}" --out_dir "${decode_dir}/${set}" \
      --asr_train_config "${asr_exp}/config.yaml" --asr_model_file "${asr_exp}/${inference_asr_model}" \
      ${inference_config:+--inference_config "${inference_config}"} --nj "${inference_nj}" \
      --job_threads "${job_threads}" --ngpu "$([ "${ngpu}" -gt 0 ] && echo 1 || echo 0)"
    stage_finished "${decode_dir}/${set}/.done" "${inputs[@]}"
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
