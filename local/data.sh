#!/usr/bin/env bash
# Stage 1 of run.sh: put Kaldi-style data dirs under --datadir.
#   --corpus embedded     synthesise the embedded corpus (no download), prepare data/{train,dev,test,eval}
#   --corpus librispeech  download the parts from openslr (or use --librispeech_root, e.g. a copy you
#                         already have: nothing is downloaded then), prepare data/<part with _>
#   --corpus none         nothing to do: bring your own data/<set> dirs (wav.scp, text, utt2spk, spk2utt)
set -euo pipefail
corpus=embedded; datadir=data; download_dir=downloads; librispeech_root=; librispeech_parts=
embedded_size=demo; seed=0; nj=2; python=python3
while [ $# -gt 0 ]; do
  name=${1#--}; [ $# -ge 2 ] || { echo "local/data.sh: option $1 needs a value" >&2; exit 1; }
  case "${name}" in
    corpus|datadir|download_dir|librispeech_root|librispeech_parts|embedded_size|seed|nj|python)
      printf -v "${name}" '%s' "$2"; shift 2 ;;
    *) echo "local/data.sh: unknown option $1" >&2; exit 1 ;;
  esac
done

prepare() {  # prepare LIBRISPEECH_ROOT PART DATA_NAME
  "${python}" -m espnet_lowrank.data.librispeech prepare --root "$1" --part "$2" --out "${datadir}/$3"
}

case "${corpus}" in
  embedded)
    out=${download_dir}/embedded_${embedded_size}_seed${seed}
    "${python}" -m espnet_lowrank.data.embedded_corpus --out "${out}" --size "${embedded_size}" \
      --seed "${seed}" --nj "${nj}"
    for part in train dev test eval; do prepare "${out}/LibriSpeech" "${part}" "${part}"; done ;;
  librispeech)
    if [ -z "${librispeech_root}" ]; then
      "${python}" -m espnet_lowrank.data.librispeech download --dest "${download_dir}" ${librispeech_parts}
      librispeech_root=${download_dir}/LibriSpeech
    fi
    for part in ${librispeech_parts}; do prepare "${librispeech_root}" "${part}" "${part//-/_}"; done
    # ESPnet's LibriSpeech recipes validate on dev = dev-clean + dev-other and train 960 h on all three parts
    combine() {  # combine OUT SOURCE...
      local out=$1; shift
      for source in "$@"; do [ -d "${datadir}/${source}" ] || return 0; done
      "${python}" -m espnet_lowrank.data.kaldi_dir "${datadir}/${out}" "${@/#/${datadir}/}"
    }
    combine dev dev_clean dev_other
    combine train_960 train_clean_100 train_clean_360 train_other_500 ;;
  none)
    echo "local/data.sh: --corpus none: using the data dirs already under ${datadir}" >&2 ;;
  *) echo "local/data.sh: --corpus ${corpus} is unknown (embedded | librispeech | none)" >&2; exit 1 ;;
esac
