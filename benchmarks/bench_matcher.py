"""Throughput and accuracy of the playbook matcher (prompts/matcher.py).

    python benchmarks/bench_matcher.py [--seconds 2]

Prints utterances per second of Matcher.match against the real playbook for final
results and for the stream of partial results leading up to them (with the text
caches cleared before every call, i.e. every utterance is new), pinyin on and off;
then recall / false triggers on a list of ASR-like sentences (Vosk spacing,
traditional characters, homophone errors, spoken numbers) that are NOT the playbook's
own examples, pinyin on and off.
"""
from __future__ import annotations

import argparse
import os
import re
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SEEDS = REPO.parent / "shared" / "seeds"
sys.path.insert(0, str(REPO))

from prompts.intent import IntentModel  # noqa: E402
from prompts.matcher import Matcher  # noqa: E402
from prompts.normalize import folded_alternatives, normalize, to_pinyin  # noqa: E402
from prompts.playbook import load_playbook  # noqa: E402


@dataclass(frozen=True)
class Case:
    speaker: str
    text: str
    expect: frozenset[str]              # categories that must fire
    also_ok: frozenset[str] = frozenset()  # may fire without counting as false
    homophone: bool = False             # contains an ASR homophone error


def case(speaker: str, text: str, *expect: str, also_ok: tuple[str, ...] = (),
         homophone: bool = False) -> Case:
    return Case(speaker, text, frozenset(expect), frozenset(also_ok), homophone)


C, A = "customer", "agent"
CASES = [
    # customer, should fire
    case(C, "我 要 去 工信部 投诉 你们", "regulator_complaint"),
    case(C, "你们 再 不 处理 我 就 打 一 二 三 一 五", "regulator_complaint"),
    case(C, "我要去公信部告你们", "regulator_complaint", also_ok=("lawsuit_threat",), homophone=True),
    case(C, "我要去通管局申诉", "regulator_complaint"),
    case(C, "你们不给解决我要精神培成", "mental_distress_compensation", homophone=True),
    case(C, "我要求你们给我精神陪常", "mental_distress_compensation", homophone=True),
    case(C, "你们得给我精神培长", "mental_distress_compensation", homophone=True),  # 长 zhang/chang
    case(C, "把你们的精神賠償拿出来", "mental_distress_compensation"),
    case(C, "我被你们气得一晚上没睡着要精神损失费", "mental_distress_compensation"),
    case(C, "楼顶的機站服設太大了我孩子天天头疼", "base_station_radiation", homophone=True),
    case(C, "你 们 装 的 那个 基 站 对 人体 有 害 吧", "base_station_radiation"),
    case(C, "你们这个基站辐射超标了", "base_station_radiation"),
    case(C, "多扣的钱你们要商貝返還给我", "double_refund", homophone=True),
    case(C, "乱扣我的钱要双倍赔偿", "double_refund", also_ok=("unauthorized_charge",)),
    case(C, "我要你们十倍赔偿", "excessive_compensation"),
    case(C, "我 要 你们 十 倍 陪 偿", "excessive_compensation", homophone=True),
    case(C, "耽误我一百万的生意你们赔得起吗", "excessive_compensation"),
    case(C, "你们不处理我就找记者曝光", "media_exposure"),
    case(C, "我 朋友 就是 电视台 的 记者", "media_exposure"),
    case(C, "我要把这事发到微博上让大家都看看", "media_exposure"),
    case(C, "我要找记者报光你们", "media_exposure", homophone=True),
    case(C, "我已经找好律师了准备起诉你们", "lawsuit_threat"),
    case(C, "那我们法院见", "lawsuit_threat"),
    case(C, "要不然我就去法院起诉", "lawsuit_threat"),
    case(C, "叫你们领导来接电话", "supervisor_demand"),
    case(C, "你做不了主就换个人来", "supervisor_demand"),
    case(C, "这个问题我已经投诉了好几次了一直没人处理", "repeated_complaint"),
    case(C, "我们整个小区都没信号要集体投诉", "collective_complaint", "network_quality"),
    case(C, "你们再不修好我就带人去砸了你们营业厅", "violence_threat"),
    case(C, "不给钱我就把录音发到网上", "extortion", also_ok=("media_exposure", "customer_recording")),
    case(C, "你们必须给我赔礼道歉", "apology_demand"),
    case(C, "今天你们不给我个说法我不挂电话", "apology_demand"),
    case(C, "你叫什么名字工号多少我要投诉你", "staff_complaint"),
    case(C, "我从来没开通过这个业务怎么每个月扣我钱", "unauthorized_charge"),
    case(C, "這個月話費怎麼這麼高啊", "bill_shock"),
    case(C, "一个月用了好几千块话费你们也不提醒", "bill_shock"),
    case(C, "我 的 号 怎么 突然 被 停 了", "service_suspension"),
    case(C, "家里宽带老断线网速太慢了", "network_quality"),
    case(C, "这边信号茶得很打电话断断续续的", "network_quality", homophone=True),
    case(C, "你们是不是把我的信息卖给别人了天天接到推销电话", "privacy_leak"),
    case(C, "最低消费这是霸王条款", "unfair_terms"),
    case(C, "营业员当初说好送流量的现在又要收钱", "false_advertising"),
    case(C, "我跟你说这通电话我全程录音了", "customer_recording"),
    # agent, should fire
    case(A, "有本事你去法院告啊", "agent_forbidden_phrase"),
    case(A, "这个不归我管你问别人吧", "agent_forbidden_phrase"),
    case(A, "我已经说过了你听不懂吗", "agent_forbidden_phrase"),
    case(A, "您放心我保证给您全额赔偿", "agent_overpromise"),
    case(A, "我也没办法这是公司规定", "agent_forbidden_phrase"),
    # customer, ordinary talk: nothing should fire
    case(C, "你好我想查一下这个月的话费"),
    case(C, "我的流量还剩多少"),
    case(C, "我今天精神挺好就是想问问套餐"),
    case(C, "我想办个双倍流量的套餐"),
    case(C, "我是在网上交的话费"),
    case(C, "我想把宽带移到新家去"),
    case(C, "好的谢谢你啊再见"),
    case(C, "我刚才一直在等"),
    case(C, "麻烦你帮我看一下账单"),
    case(C, "我要办停机保号"),
    case(C, "我家在十楼信号还可以"),
    case(C, "我想改一下套餐每个月一百块的那个"),
    case(C, "请问营业厅几点关门"),
    case(C, "你们的服务挺好的"),
    case(C, "我朋友推荐我办的这个卡"),
    case(C, "我在外地出差需要开通漫游吗"),
    case(C, "我 想 问 一下 积分 怎么 兑换"),
    case(C, "密码忘了怎么重置"),
    case(C, "那我明天再去营业厅看看"),
    case(C, "我家孩子用的手机卡"),
    case(C, "我上个月交了两百块话费"),
    case(C, "能不能帮我把套餐降一档"),
    case(C, "我得先还人家的钱再交话费"),
    # agent, ordinary talk
    case(A, "您好请问有什么可以帮您"),
    case(A, "非常抱歉给您带来不便我马上为您查询"),
    case(A, "您的问题我已经记录下来了会尽快给您回复"),
    case(A, "请您稍等我帮您看一下"),
    case(A, "您可以通过营业厅或者网上营业厅办理"),
    case(A, "您反映的信号问题我们会安排工程师上门"),
]


def partials(text: str) -> list[str]:
    """The growing partial results a streaming recogniser emits, two characters at a time."""
    words = text.split() if " " in text else [text[i:i + 2] for i in range(0, len(text), 2)]
    return [" ".join(words[:n]) for n in range(1, len(words) + 1)]


def _rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6


def clear_text_caches() -> None:
    normalize.cache_clear()
    to_pinyin.cache_clear()
    folded_alternatives.cache_clear()


def throughput(matcher: Matcher, utterances: list[tuple[str, str]], seconds: float,
               cold: bool = True) -> tuple[float, float, float, float]:
    """(utterances/s, median, p90, p99 in µs); `cold` clears the text caches before each
    call (every utterance new), else repeated texts hit them (Vosk repeats partials)."""
    timings: list[float] = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        for speaker, text in utterances:
            if cold:
                clear_text_caches()
            t0 = time.perf_counter()
            matcher.match(text, speaker)
            timings.append(time.perf_counter() - t0)
    timings.sort()
    return (len(timings) / sum(timings), statistics.median(timings) * 1e6,
            timings[int(len(timings) * 0.9)] * 1e6, timings[int(len(timings) * 0.99)] * 1e6)


def accuracy(matcher: Matcher) -> dict[str, object]:
    expected = found = false = homophone_expected = homophone_found = 0
    misses, false_triggers = [], []
    for c in CASES:
        got = {m.category.id for m in matcher.match(c.text, c.speaker)}
        hit = got & c.expect
        expected += len(c.expect)
        found += len(hit)
        if c.homophone:
            homophone_expected += len(c.expect)
            homophone_found += len(hit)
        misses += [(c.text, cat) for cat in sorted(c.expect - got)]
        wrong = got - c.expect - c.also_ok
        false += len(wrong)
        false_triggers += [(c.text, cat) for cat in sorted(wrong)]
    return dict(expected=expected, found=found, false=false, homophone_expected=homophone_expected,
                homophone_found=homophone_found, misses=misses, false_triggers=false_triggers)


def seed_clauses() -> list[str]:
    """Clauses of the shared seed texts (complaint-handling training material)."""
    clauses: set[str] = set()
    for path in sorted(SEEDS.glob("*.txt")):
        for clause in re.split(r"[。！？；，、\n,.!?;:：“”\"（）()《》\s]+", path.read_text()):
            if 4 <= len(clause) <= 40:
                clauses.add(clause)
    return sorted(clauses)


def pinyin_only_matches(matcher: Matcher, clauses: list[str]) -> list[tuple[str, str, str, str]]:
    """Matches that only pinyin found: (speaker, category, phrase, matched text)."""
    found = []
    for clause in clauses:
        for speaker in ("customer", "agent"):
            for m in matcher.match(clause, speaker):
                if m.via == "pinyin":
                    found.append((speaker, m.category.id, m.phrase,
                                  normalize(clause)[slice(*m.span)]))
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="time per throughput run")
    args = parser.parse_args()

    playbook = load_playbook()
    phrases = sum(len(c.phrases) for c in playbook.categories)
    print(f"playbook: {len(playbook.categories)} categories, {phrases} phrases")
    t0 = time.perf_counter()
    matchers = {"pinyin on": Matcher(playbook), "pinyin off": Matcher(playbook, use_pinyin=False)}
    print(f"building both phrase matchers: {(time.perf_counter() - t0) * 1e3:.0f} ms")
    rss0 = _rss_mb()
    t0 = time.perf_counter()
    matchers["+intent"] = Matcher(playbook, intent=IntentModel.load())
    print(f"loading the intent model: {(time.perf_counter() - t0) * 1e3:.0f} ms, "
          f"+{_rss_mb() - rss0:.0f} MB resident")

    finals = [(c.speaker, c.text) for c in CASES]
    partial_stream = [(c.speaker, p) for c in CASES for p in partials(c.text)]
    mean_chars = statistics.mean(len(normalize(t)) for _, t in finals)
    load = os.getloadavg()[0]
    print(f"\nthroughput, one thread ({len(finals)} finals, mean {mean_chars:.1f} chars; "
          f"{len(partial_stream)} partials; cold = text caches cleared before every call; "
          f"load average {load:.1f} on {os.cpu_count()} CPUs: p99 includes preemption)")
    print(f"{'':12} {'kind':16} {'utt/s':>7} {'median µs':>10} {'p90 µs':>7} {'p99 µs':>7}")
    runs = (("finals, cold", finals, True), ("partials, cold", partial_stream, True),
            ("partials, warm", partial_stream, False))
    for name, matcher in matchers.items():
        for kind, utterances, cold in runs:
            rate, median, p90, p99 = throughput(matcher, utterances, args.seconds, cold)
            print(f"{name:12} {kind:16} {rate:7.0f} {median:10.0f} {p90:7.0f} {p99:7.0f}")

    positives = sum(1 for c in CASES if c.expect)
    print(f"\naccuracy on {len(CASES)} ASR-like sentences ({positives} should fire, "
          f"{len(CASES) - positives} ordinary)")
    print(f"{'':12} {'recall':>14} {'homophones':>12} {'false triggers':>15}")
    results = {name: accuracy(matcher) for name, matcher in matchers.items()}
    for name, r in results.items():
        recall = f"{r['found']}/{r['expected']} ({100 * r['found'] / r['expected']:.0f}%)"
        homophones = f"{r['homophone_found']}/{r['homophone_expected']}"
        print(f"{name:12} {recall:>14} {homophones:>12} {r['false']:>15}")
    for name, r in results.items():
        for text, cat in r["misses"]:
            print(f"  {name}: missed {cat}: {text}")
        for text, cat in r["false_triggers"]:
            print(f"  {name}: FALSE {cat}: {text}")

    clauses = seed_clauses()
    if clauses:
        found = pinyin_only_matches(matchers["pinyin on"], clauses)
        print(f"\npinyin-only matches on {len(clauses)} clauses of {SEEDS} "
              f"(topical text, so any hit is printed for inspection): {len(found)}")
        for speaker, category, phrase, text in found:
            print(f"  {speaker}: {category} {phrase} <- {text}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
