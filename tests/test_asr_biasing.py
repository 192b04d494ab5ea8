"""Contextual biasing: key terms derived from the playbook, within Whisper's prompt budget, and
passed to faster-whisper on both the live and the post-call path."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from asr.biasing import (CLOSED_CLASS, HOTWORD_TOKENS, MAX_PROMPT_TOKENS, SEPARATOR, fit_to_budget,
                         hotword_string, playbook_terms, whisper_biasing, whisper_token_counter)
from prompts.playbook import load_playbook

KEY_TERMS = ("工信部", "营业厅", "精神赔偿", "双倍返还", "基站辐射", "霸王条款", "虚假宣传")


@pytest.fixture(scope="module")
def playbook():
    return load_playbook()


def test_terms_come_from_the_customer_phrases_of_the_playbook(playbook):
    terms = playbook_terms(playbook)
    customer = [p for c in playbook.categories if c.speaker == "customer" for p in c.phrases]
    assert len(terms) == len(set(terms)) > 50
    for term in terms:
        assert len(term) >= 2 and any(term in phrase for phrase in customer), term
        assert not set(term) & CLOSED_CLASS, f"{term}: pronouns and particles are not key terms"
    for key in KEY_TERMS:
        assert key in terms
    # Every customer category contributes its main term in the first round.
    first_round = terms[:sum(c.speaker == "customer" for c in playbook.categories)]
    assert {"工信部", "营业厅", "精神赔偿", "双倍返还", "基站辐射"} <= set(first_round)
    # Words that every category uses are ordinary talk, and overlapping terms are not repeated.
    assert "投诉" not in terms and "你们" not in terms
    assert not any(a != b and a in b for a in terms for b in terms)


def test_terms_follow_the_playbook_not_a_second_list(playbook):
    regulator = playbook.category("regulator_complaint")
    edited = dataclasses.replace(regulator, phrases=("我要找纪委", *regulator.phrases))
    changed = dataclasses.replace(playbook, categories=tuple(
        edited if c.id == regulator.id else c for c in playbook.categories))
    assert "纪委" in playbook_terms(changed) and "纪委" not in playbook_terms(playbook)
    agent_only = [c for c in playbook.categories if c.speaker == "agent"]
    assert agent_only and playbook_terms(dataclasses.replace(playbook, categories=tuple(agent_only))) == []


def test_budget_is_a_prefix_in_priority_order():
    terms = ["工信部", "营业厅", "精神赔偿", "双倍返还"]
    by_chars = len  # a stand-in tokenizer: one token per character
    assert fit_to_budget(terms, by_chars, budget=7) == ["工信部", "营业厅"]        # 工信部、营业厅
    assert fit_to_budget(terms, by_chars, budget=6) == ["工信部"]
    assert fit_to_budget(terms, by_chars, budget=100) == terms
    assert hotword_string(terms[:2]) == f"工信部{SEPARATOR}营业厅"


def test_hotwords_fit_whisper_prompt_budget(playbook, whisper_base_model_dir):
    count = whisper_token_counter(whisper_base_model_dir)
    assert count("工信部") >= 3                      # real tokenizer: Chinese characters cost 1-3 tokens
    for budget in (60, HOTWORD_TOKENS, MAX_PROMPT_TOKENS):
        biasing = whisper_biasing(playbook, count, budget)
        assert 0 < biasing.hotword_tokens <= budget
        assert biasing.hotwords == SEPARATOR.join(biasing.terms)
        assert list(biasing.terms) == playbook_terms(playbook)[:len(biasing.terms)]
    default = whisper_biasing(playbook, count)
    assert {"工信部", "精神赔偿", "双倍返还", "基站辐射"} <= set(default.terms)
    with pytest.raises(ValueError):
        whisper_biasing(playbook, count, MAX_PROMPT_TOKENS + 1)


@pytest.mark.slow
async def test_whisper_engine_passes_hotwords_on_live_and_post_call_paths(playbook, whisper_base_model_dir):
    from asr.whisper_engine import WHISPER_CONTEXT, WhisperEngine
    from conftest_asr import read_pcm, sample_path

    engine = WhisperEngine(whisper_base_model_dir, decode_threads=1, biasing_terms=playbook_terms(playbook))
    seen: list[dict] = []
    real = engine._model.transcribe

    def spy(audio, **options):
        seen.append(options)
        return real(audio, **options)

    engine._model.transcribe = spy
    try:
        assert "工信部" in engine.biasing_terms and engine.hotwords
        assert engine.prompt_tokens + engine.max_new_tokens <= WHISPER_CONTEXT
        options = engine.transcribe_options(25.0)
        assert options["hotwords"] == engine.hotwords and options["initial_prompt"]
        assert engine.prompt_tokens + options["max_new_tokens"] <= WHISPER_CONTEXT

        pcm, rate = read_pcm(sample_path("07"))              # ordinary speech about running
        stream = engine.open_stream(rate)
        events = await stream.feed(pcm + bytes(rate * 2))
        events += await stream.finish()
        live = "".join(getattr(e, "text", "") for e in events)
        post = "".join(f.text for f in engine.transcribe_file(np.frombuffer(pcm, "<i2"), rate))
    finally:
        engine.close()
    assert len(seen) >= 2 and all(o.get("hotwords") == engine.hotwords for o in seen)
    for text in (live, post):
        assert "跑步" in text
        assert not any(term in text for term in engine.biasing_terms), f"hotword leaked into {text!r}"


@pytest.mark.slow
def test_config_switches_biasing(whisper_base_model_dir):
    from asr import create_engine
    from callassist.config import load_config

    on = create_engine(load_config(env={}), name="whisper", model=whisper_base_model_dir)
    off = create_engine(load_config(env={"CALLASSIST_ASR_BIASING": "false"}), name="whisper",
                        model=whisper_base_model_dir)
    try:
        assert load_config(env={}).asr.biasing is True
        assert on.hotwords and "工信部" in on.biasing_terms
        assert "hotwords" in on.transcribe_options(3.0)
        assert off.hotwords is None and off.biasing_terms == ()
        assert "hotwords" not in off.transcribe_options(3.0)
    finally:
        on.close()
        off.close()


def test_tail_window_echo_of_the_hotwords_is_dropped():
    """faster-whisper decodes the audio after the last word as another window; there Whisper
    base echoes the hint list (measured: 赔一百万 双倍返还, every word p < 0.2, no-speech 0.97)."""
    from types import SimpleNamespace

    from asr.whisper_engine import WhisperEngine

    def segment(text, no_speech, probabilities):
        words = [SimpleNamespace(word=ch, start=i * 0.1, end=i * 0.1 + 0.1, probability=p)
                 for i, (ch, p) in enumerate(zip(text, probabilities))]
        return SimpleNamespace(text=text, no_speech_prob=no_speech, avg_logprob=-0.6,
                               compression_ratio=1.0, words=words, start=0.0, end=1.0)

    engine = object.__new__(WhisperEngine)   # _clean needs no model
    engine._to_simplified = lambda text: text
    speech = segment("广州市房地产中介协会分析", 0.27, [0.8] * 12)
    echo = segment("赔一百万双倍返还", 0.98, [0.0, 0.0, 0.01, 0.08, 0.18, 0.0, 0.01, 0.0])
    credits = segment("作词作曲作曲", 0.51, [0.01, 0.53, 0.01, 0.63, 0.01, 0.71])
    rest_of_speech = segment("我要精神赔偿", 0.3, [0.9] * 6)   # a later window with real words
    kept = engine._clean([speech, echo, credits, rest_of_speech])
    assert [p.text for p in kept] == ["广州市房地产中介协会分析", "我要精神赔偿"]
    quiet_first = segment("喂", 0.7, [0.3])                   # only later windows are judged so
    assert [p.text for p in engine._clean([quiet_first])] == ["喂"]
