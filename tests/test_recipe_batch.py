"""bench's batch for a batch_bins is the one ESPnet's numel sampler builds; a training config's, the one its
own sampler builds."""

import pytest

from espnet_lowrank.recipe_batch import LIBRISPEECH_100_BATCH_BINS, config_batch, recipe_batch


def test_uniform_utterances_fill_the_bins_as_espnet_does():
    # ESPnet closes a batch with the utterance that first exceeds the bins:
    # 12 s (192000 samples) + 40 tokens x 5000 units = 392000 bins each
    speech, text = recipe_batch(LIBRISPEECH_100_BATCH_BINS, vocab=5000, seconds=12, text_length=40)
    assert len(speech) == LIBRISPEECH_100_BATCH_BINS // 392000 + 1 == 41
    assert set(speech) == {192000} and set(text) == {40}


def test_a_shape_file_gives_one_of_the_samplers_batches(tmp_path):
    from espnet2.samplers.num_elements_batch_sampler import NumElementsBatchSampler

    speech_shape, text_shape = tmp_path / "speech_shape", tmp_path / "text_shape.bpe"
    lengths = {f"utt{i:02d}": (16000 + 3001 * ((i * 7) % 30), 5 + (i * 11) % 17) for i in range(30)}
    speech_shape.write_text("".join(f"{k} {s}\n" for k, (s, _) in lengths.items()))
    text_shape.write_text("".join(f"{k} {t},50\n" for k, (_, t) in lengths.items()))
    files = [str(speech_shape), str(text_shape)]
    speech, text = recipe_batch(200000, vocab=50, shape_files=files)
    batches = list(NumElementsBatchSampler(200000, files))
    middle = batches[len(batches) // 2]
    assert speech == [lengths[k][0] for k in middle] and text == [lengths[k][1] for k in middle]
    assert speech == sorted(speech, reverse=True) and len(batches) > 2
    # ESPnet's rule, with the lengths of the longest utterance so far: the batch was closed by its
    # longest utterance, and without it the batch fitted
    assert len(speech) * (speech[0] + 50 * text[0]) > 200000
    assert (len(speech) - 1) * (speech[1] + 50 * text[1]) <= 200000


def test_bad_bins_and_missing_shape_files_are_named(tmp_path):
    with pytest.raises(ValueError, match="batch_bins=0"):
        recipe_batch(0, vocab=50)
    with pytest.raises(ValueError, match="nowhere/speech_shape not found"):
        recipe_batch(1000, vocab=50, shape_files=["nowhere/speech_shape", "nowhere/text_shape.bpe"])


@pytest.mark.parametrize("config, seconds, utterances", [
    ({"batch_type": "unsorted", "batch_size": 3}, 4, 3),
    ({"batch_type": "sorted", "batch_size": 5}, 4, 5),
    ({}, 4, 20),  # ESPnet's default, folded: 20 utterances below the 80000-sample fold length
    ({}, 12, 6),  # 192000 samples fold 2 times: 20 / (1 + 2)
    ({"batch_type": "numel", "batch_bins": 400000, "batch_size": 3}, 4, 7),  # 64000 + 10 x 19 bins each
])
def test_a_training_configs_own_sampler_makes_the_batch(config, seconds, utterances):
    speech, text = config_batch(config, vocab=19, seconds=seconds, text_length=10)
    assert len(speech) == utterances and set(speech) == {seconds * 16000} and set(text) == {10}
