"""Normalisation and pinyin of ASR text (prompts/normalize.py)."""
import pytest

from prompts.normalize import (fold_pinyin, fold_syllable, folded_alternatives, normalize,
                               readings, to_pinyin)


@pytest.mark.parametrize("raw", [
    "我 要 去 工信部 投诉",          # Vosk puts spaces between words
    "我要去工信部投訴",              # traditional
    "我要去工信部投诉！",            # CJK punctuation
    "我要去，工信部 投诉...",        # mixed punctuation
    " 我要去工信部投诉\n",
])
def test_renderings_of_one_sentence_are_equal(raw):
    assert normalize(raw) == "我要去工信部投诉"


def test_full_width_and_latin_case():
    assert normalize("ＳＰ业务 ＡＢＣ１２３") == normalize("sp业务abc123") == "sp业务abc123"


@pytest.mark.parametrize("spoken, written", [
    ("十倍", "10倍"),
    ("十 倍 赔偿", "10倍赔偿"),
    ("１０倍", "10倍"),
    ("一二三一五", "12315"),
    ("打幺零零八六", "打10086"),
    ("一百五十块", "150块"),
    ("两个月", "2个月"),
    ("两倍", "2倍"),
    ("一万块", "10000块"),
    ("十万", "10万"),
    ("三千零二元", "3002元"),
    ("两万五千元", "25000元"),
    ("等了十分钟", "等了10分钟"),
])
def test_numbers_have_one_form(spoken, written):
    assert normalize(spoken) == normalize(written)
    assert not any(ch in "一二三四五六七八九十百千万两幺零" for ch in normalize(spoken))


@pytest.mark.parametrize("word", [
    "一下", "一直", "一样", "一起", "一定", "一点", "万一", "千万别", "十分不满",
    "七八个", "三三两两", "一五一十", "统一", "百姓",
])
def test_ordinary_words_with_numerals_are_kept(word):
    assert normalize(word) == word


def test_pinyin_is_one_toneless_syllable_per_char():
    text = normalize("我要去工信部投诉SP10倍")
    syllables = to_pinyin(text)
    assert len(syllables) == len(text)
    assert syllables[:8] == ("wo", "yao", "qu", "gong", "xin", "bu", "tou", "su")
    assert syllables[8:] == ("s", "p", "1", "0", "bei")


def test_pinyin_heteronyms_follow_two_char_words():
    assert to_pinyin("双倍返还") == ("shuang", "bei", "fan", "huan")
    assert to_pinyin("还要")[0] == "hai"
    assert to_pinyin("曝光")[0] == "bao"


@pytest.mark.parametrize("a, b", [
    ("公信部", "工信部"),
    (normalize("機站服設"), "基站辐射"),
])
def test_homophones_have_equal_pinyin(a, b):
    assert to_pinyin(a) == to_pinyin(b)


@pytest.mark.parametrize("a, b", [
    ("精神培成", "精神赔偿"),    # cheng / chang
    ("商贝", "双倍"),            # shang / shuang remain one syllable apart
])
def test_fold_leaves_at_most_one_syllable_apart(a, b):
    fa, fb = fold_pinyin(to_pinyin(a)), fold_pinyin(to_pinyin(b))
    assert sum(x != y for x, y in zip(fa, fb)) <= 1


@pytest.mark.parametrize("syllable, folded", [
    ("zhang", "zan"), ("chi", "ci"), ("shen", "sen"), ("ni", "li"), ("jing", "jin"),
    ("feng", "fen"), ("huang", "huan"), ("gong", "gong"),
])
def test_fold_syllable(syllable, folded):
    assert fold_syllable(syllable) == folded


def test_h_f_folding_is_optional():
    assert fold_syllable("hu") == "hu"
    assert fold_syllable("hu", h_f=True) == fold_syllable("fu", h_f=True) == "fu"


def test_readings_of_heteronyms_are_toneless_and_distinct():
    assert readings("长") == ("zhang", "chang")
    assert readings("还")[:2] == ("hai", "huan")
    assert readings("律") == ("lv",)            # same spelling as to_pinyin
    assert readings("5") == ("5",)


def test_folded_alternatives_list_only_other_readings():
    assert to_pinyin("精神培长")[3] == "zhang"
    assert dict(folded_alternatives("精神培长"))[3] == ("can",)   # chang folded
    assert folded_alternatives("律师") == ()                        # no heteronyms
    assert folded_alternatives("我要") == ()        # 要 yao/yao: differs in tone only
    assert dict(folded_alternatives("还", h_f=True))[0][0] == "fuan"  # folded like to_pinyin's
