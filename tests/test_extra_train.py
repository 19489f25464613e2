"""data.extra_train: training utterances of other sources mixed into the main corpus."""

from __future__ import annotations

import pytest

from emformer_variants.data.datamodule import ASRDataModule
from emformer_variants.data.sources import ManifestSource
from emformer_variants.errors import UserError
from tests.conftest import compose_config


def test_extra_sources_add_their_train_split_repeated(mini_corpus):
    main = ASRDataModule(ManifestSource(str(mini_corpus)))
    mixed = ASRDataModule(ManifestSource(str(mini_corpus)),
                          extra_train=[ManifestSource(str(mini_corpus))], extra_repeat=3)
    base = main._train_utterances()
    got = mixed._train_utterances()
    assert len(got) == 4 * len(base)
    assert [u.audio for u in got[: len(base)]] == [u.audio for u in base]
    # dev and test still come from the main source alone
    assert len(mixed.utterances("dev")) == len(main.utterances("dev"))


def test_extra_repeat_per_source(mini_corpus):
    base = ASRDataModule(ManifestSource(str(mini_corpus)))._train_utterances()
    mixed = ASRDataModule(ManifestSource(str(mini_corpus)), extra_repeat=[2, 1],
                          extra_train=[ManifestSource(str(mini_corpus))] * 2)
    assert mixed.extra_repeat == [2, 1]
    assert len(mixed._train_utterances()) == 4 * len(base)


@pytest.mark.parametrize("repeat", [0, -1, 1.5, True, [1], [1, 0], [1, 1, 1], "2"])
def test_bad_extra_repeat_is_one_line(mini_corpus, repeat):
    with pytest.raises(UserError, match="data.extra_repeat"):
        ASRDataModule(ManifestSource(str(mini_corpus)), extra_repeat=repeat,
                      extra_train=[ManifestSource(str(mini_corpus))] * 2)


def test_extra_source_without_train_is_a_user_error(mini_corpus, tmp_path):
    (tmp_path / "dev.jsonl").write_text((mini_corpus / "dev.jsonl").read_text())
    dm = ASRDataModule(ManifestSource(str(mini_corpus)), extra_train=[ManifestSource(str(tmp_path))])
    with pytest.raises(UserError, match=r"data.extra_train\[0\]"):
        dm._train_utterances()


@pytest.mark.parametrize("name", ["pretrain_kokoro", "pretrain_kokoro_more"])
def test_the_kokoro_configs_compose(name):
    cfg = compose_config("train", [f"data={name}"])
    extra = cfg.data.extra_train[0]
    assert extra.engine_weights == {"kokoro": 1.0} and cfg.data.extra_repeat == 4
    assert cfg.data.source.num_train == 24000
    import hydra

    from emformer_variants.data.sources import SyntheticSource

    dm = hydra.utils.instantiate(cfg.data)  # builds nothing yet
    assert type(dm.extra_train[0]) is SyntheticSource and dm.extra_train[0].num_train == 700
    assert {e for x in dm.extra_train for e in x.engine_weights} == (
        {"kokoro"} if name == "pretrain_kokoro" else {"kokoro", "kokoro_mix"})


def test_the_all_voices_config_repeats_only_kokoro():
    cfg = compose_config("train", ["experiment=tiny_base/all_voices"])
    import hydra

    dm = hydra.utils.instantiate(cfg.data)  # builds nothing yet
    weights = [set(e.engine_weights) for e in dm.extra_train]
    assert weights == [{"mbrola", "rhvoice"}, {"pico"}, {"kokoro"}] and dm.extra_repeat == [1, 1, 4]
    assert cfg.data.augment.enabled and cfg.task_name == "tiny_base_all_voices"


def test_stage10_is_every_voice_over_its_own_19200_steps():
    stage10 = compose_config("train", ["experiment=tiny_base/stage10"])
    every = compose_config("train", ["experiment=tiny_base/every_voice"])
    assert stage10.trainer.max_steps == stage10.module.scheduler.total_steps == 19200
    assert stage10.trainer.val_check_interval == 2400
    assert stage10.data == every.data and stage10.module.optimizer == every.module.optimizer
    assert stage10.task_name == "tiny_base_stage10"


def test_accents_more_keeps_the_stage10_sources_and_draws_two_new_ones():
    more = compose_config("train", ["experiment=tiny_base/accents_more"])
    stage10 = compose_config("train", ["experiment=tiny_base/stage10"])
    old, new = list(stage10.data.extra_train), list(more.data.extra_train)
    repeats = list(more.data.extra_repeat)
    assert new[:len(old)] == old and repeats[:len(old)] == list(stage10.data.extra_repeat)
    added = [dict(x.engine_weights) for x in new[len(old):]]
    assert added == [{"accents": 1.0}, {"mbrola": 0.5, "rhvoice": 0.5}]
    assert len({x.seed for x in new}) == len(new) and more.trainer.max_steps == 2400
