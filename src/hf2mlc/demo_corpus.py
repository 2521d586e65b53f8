"""The demo model's text: Japanese chat dialogues that the project writes itself, so nothing is downloaded.

The dialogues imitate what LINE's instruction model sees (``ユーザー: …`` / ``システム: …`` turns joined by real
newlines) and deliberately carry what tends to break tokenizers and converters: multi-line answers,
numbers, dates, prices with separators, ASCII words, full-width and half-width forms that NFKC rewrites,
and a few emoji and rare kanji so rare that the SentencePiece trainer leaves them to byte fallback.

Everything is drawn from one ``random.Random(seed)`` in a fixed order from tuples (never from set or dict
iteration, never from ``hash``), so the same seed gives the same corpus on every run and platform.
Answers are mostly determined by the question (sums, prices, weekdays, region lists), which is what
lets a tiny model reach a held-out perplexity far below uniform after a short training.

A dialogue never contains a blank line, so a held-out file can separate dialogues by one
(:func:`write_dialogues` / :func:`read_dialogues`).
"""

from __future__ import annotations

import datetime
import random
from collections.abc import Callable
from pathlib import Path

from .errors import UserError

#: Dialogues per split.  Sized so that SentencePiece reaches the demo's vocabulary and the model's
#: few hundred training steps see each training dialogue a few times.
TRAIN_DIALOGUES = 3000
HELDOUT_DIALOGUES = 150

#: The prompt roles of LINE's instruction model (its card writes ``ユーザー: …\nシステム: ``).
USER = "ユーザー"
SYSTEM = "システム"

# ---------------------------------------------------------------------------------------------------
# Lexicon (tuples: their order is part of the corpus definition)

_CITIES = ("東京", "大阪", "名古屋", "札幌", "福岡", "仙台", "広島", "京都", "神戸", "横浜", "那覇", "金沢")
_WEATHER = ("晴れ", "曇り", "雨", "雪", "晴れ時々曇り", "曇りのち雨")
_DAYS = ("今日", "明日", "明後日", "週末")
_WEEKDAYS = ("月曜日", "火曜日", "水曜日", "木曜日", "金曜日", "土曜日", "日曜日")

_REGIONS = (
    ("四国", ("徳島県", "香川県", "愛媛県", "高知県")),
    ("九州", ("福岡県", "佐賀県", "長崎県", "熊本県", "大分県", "宮崎県", "鹿児島県")),
    ("東北", ("青森県", "岩手県", "宮城県", "秋田県", "山形県", "福島県")),
    ("北陸", ("新潟県", "富山県", "石川県", "福井県")),
    ("近畿", ("三重県", "滋賀県", "京都府", "大阪府", "兵庫県", "奈良県", "和歌山県")),
    ("中国地方", ("鳥取県", "島根県", "岡山県", "広島県", "山口県")),
)

_ITEMS = (
    ("りんご", "個"), ("みかん", "個"), ("ノート", "冊"), ("ボールペン", "本"), ("コーヒー", "杯"),
    ("チョコレート", "枚"), ("Tシャツ", "枚"), ("USBケーブル", "本"), ("おにぎり", "個"), ("牛乳", "本"),
)

_WORDS = (
    ("apple", "りんご"), ("water", "水"), ("book", "本"), ("cat", "猫"), ("dog", "犬"), ("train", "電車"),
    ("school", "学校"), ("music", "音楽"), ("computer", "コンピューター"), ("phone", "電話"),
    ("weather", "天気"), ("friend", "友達"), ("morning", "朝"), ("flower", "花"),
)

_DISHES = (
    ("カレーライス", ("玉ねぎと人参を切ります。", "肉と野菜を炒めます。", "水を加えて20分煮ます。", "ルーを入れて溶かします。")),
    ("味噌汁", ("だしを温めます。", "豆腐とわかめを入れます。", "火を止めて味噌を溶かします。")),
    ("卵焼き", ("卵を3個割ってよく混ぜます。", "砂糖と塩を少し加えます。", "フライパンで少しずつ巻きながら焼きます。")),
    ("おにぎり", ("ご飯を炊きます。", "手に塩をつけます。", "具を入れて三角に握ります。", "海苔を巻きます。")),
)

_TOPICS = (
    ("MLC LLM", "スマートフォンやMacの上で大規模言語モデルを動かすための仕組み"),
    ("iPhone", "Apple社のスマートフォン"),
    ("SentencePiece", "文章をサブワードに分割するトークナイザー"),
    ("GPU", "画像処理や行列計算を高速に行うプロセッサ"),
    ("Python", "読みやすさを重視したプログラミング言語"),
    ("量子化", "モデルの重みを少ないビット数で表して小さくする技術"),
    ("富士山", "静岡県と山梨県にまたがる日本一高い山で、標高は3776メートル"),
    ("新幹線", "日本の主要都市を結ぶ高速鉄道"),
)

_GREETINGS = (
    ("こんにちは。", "こんにちは！今日はどのようなご用件でしょうか？"),
    ("おはようございます。", "おはようございます。今日も一日よろしくお願いします。"),
    ("こんばんは。", "こんばんは。何かお手伝いできることはありますか？"),
    ("ありがとうございました。", "どういたしまして。またいつでも聞いてください。"),
)

#: Written as users type them: NFKC (the tokenizer's normalization) maps these to ASCII / full width.
_FULL_WIDTH_DIGITS = str.maketrans("0123456789", "０１２３４５６７８９")
_HALF_WIDTH_KANA = ("ｺﾝﾋﾟｭｰﾀｰ", "ｽﾏｰﾄﾌｫﾝ", "ｶﾀｶﾅ")

#: Rare enough in the corpus that the trainer's character coverage leaves them to byte fallback.
RARE_CHARACTERS = ("😊", "🎉", "🍣", "𠮷", "髙", "𩸽", "龘")
_RARE_RATE = 0.004


def _number(rng: random.Random, text: str) -> str:
    """Write a number as users do: now and then in full-width digits."""
    return text.translate(_FULL_WIDTH_DIGITS) if rng.random() < 0.1 else text


def _greeting(rng: random.Random) -> list[tuple[str, str]]:
    return [rng.choice(_GREETINGS)]


def _weather(rng: random.Random) -> list[tuple[str, str]]:
    city, day, sky = rng.choice(_CITIES), rng.choice(_DAYS), rng.choice(_WEATHER)
    high = rng.randint(-2, 35)
    low = high - rng.randint(3, 10)
    return [(
        f"{city}の{day}の天気を教えてください。",
        f"{city}の{day}の天気は{sky}で、最高気温は{high}度、最低気温は{low}度の予報です。",
    )]


def _weekday(rng: random.Random) -> list[tuple[str, str]]:
    day = datetime.date(2020, 1, 1) + datetime.timedelta(days=rng.randrange(3653))
    name = _WEEKDAYS[day.weekday()]
    if rng.random() < 0.5:
        question = f"{_number(rng, str(day.year))}年{day.month}月{day.day}日は何曜日ですか？"
    else:
        question = f"{day.isoformat()} は何曜日？"
    return [(question, f"{day.year}年{day.month}月{day.day}日は{name}です。")]


def _arithmetic(rng: random.Random) -> list[tuple[str, str]]:
    a, b = rng.randint(1, 99), rng.randint(1, 99)
    if rng.random() < 0.5:
        return [(f"{_number(rng, str(a))}たす{_number(rng, str(b))}はいくつですか？", f"{a} + {b} = {a + b} です。")]
    big, small = max(a, b), min(a, b)
    return [(f"{big} - {small} を計算してください。", f"{big} - {small} = {big - small} です。")]


def _price(rng: random.Random) -> list[tuple[str, str]]:
    (item, counter), count = rng.choice(_ITEMS), rng.randint(2, 12)
    unit = rng.choice((80, 120, 150, 240, 380, 980, 1200))
    total = count * unit
    question = f"{item}を{count}{counter}買うといくらですか？1{counter}{unit:,}円です。"
    answer = f"{item}は1{counter}{unit:,}円なので、{count}{counter}で{total:,}円です。"
    if rng.random() < 0.2:
        answer += f"（税込みで￥{total * 110 // 100:,}）"
    return [(question, answer)]


def _region(rng: random.Random) -> list[tuple[str, str]]:
    region, prefectures = rng.choice(_REGIONS)
    lines = "\n".join(f"{i}. {name}" for i, name in enumerate(prefectures, 1))
    return [(
        f"{region}の県名を全て列挙してください。",
        f"{region}には{len(prefectures)}つの府県があります。\n{lines}",
    )]


def _translate(rng: random.Random) -> list[tuple[str, str]]:
    english, japanese = rng.choice(_WORDS)
    shown = english.upper() if rng.random() < 0.15 else english
    if rng.random() < 0.1:
        shown = "".join(chr(ord(c) + 0xFEE0) for c in shown)  # full-width Latin, as typed by IMEs
    return [(f"「{shown}」を日本語にしてください。", f"「{english}」は日本語で「{japanese}」です。")]


def _recipe(rng: random.Random) -> list[tuple[str, str]]:
    dish, steps = rng.choice(_DISHES)
    body = "\n".join(f"・{step}" for step in steps)
    return [(f"{dish}の作り方を教えて。", f"{dish}の作り方は次のとおりです。\n{body}\n以上です。")]


def _explain(rng: random.Random) -> list[tuple[str, str]]:
    topic, meaning = rng.choice(_TOPICS)
    return [(f"{topic}とは何ですか？", f"{topic}とは、{meaning}です。")]


def _clock(rng: random.Random) -> list[tuple[str, str]]:
    hour, minute = rng.randrange(24), rng.randrange(0, 60, 5)
    part, shown = ("午前", hour) if hour < 12 else ("午後", hour - 12)
    return [(f"{hour}:{minute:02d} を日本語で言うと？", f"{part}{shown}時{minute}分です。")]


def _katakana(rng: random.Random) -> list[tuple[str, str]]:
    word = rng.choice(_HALF_WIDTH_KANA)
    return [(f"「{word}」は半角カタカナですか？", "はい、半角カタカナです。全角で書くと読みやすくなります。")]


_KINDS: tuple[tuple[Callable[[random.Random], list[tuple[str, str]]], int], ...] = (
    (_greeting, 2), (_weather, 4), (_weekday, 3), (_arithmetic, 4), (_price, 4), (_region, 3),
    (_translate, 3), (_recipe, 2), (_explain, 3), (_clock, 2), (_katakana, 1),
)


def _sprinkle_rare(rng: random.Random, text: str) -> str:
    """Append a rare character now and then, so byte fallback has something to do."""
    if rng.random() < _RARE_RATE:
        return text + rng.choice(RARE_CHARACTERS)
    return text


def dialogue(rng: random.Random) -> str:
    """One chat of one to three exchanges, turns separated by single newlines, no trailing newline."""
    functions = tuple(kind for kind, _ in _KINDS)
    weights = tuple(weight for _, weight in _KINDS)
    turns: list[str] = []
    for _ in range(rng.choice((1, 1, 2, 2, 3))):
        (generate,) = rng.choices(functions, weights)
        for question, answer in generate(rng):
            turns.append(f"{USER}: {_sprinkle_rare(rng, question)}")
            turns.append(f"{SYSTEM}: {_sprinkle_rare(rng, answer)}")
    return "\n".join(turns)


def split_exchanges(text: str) -> list[tuple[str, str]]:
    """The (question, answer) exchanges of a dialogue written by :func:`dialogue`, in order.

    The inverse of :func:`dialogue`'s layout: every exchange opens with ``ユーザー: `` at the start of a
    line, a question is one line, and an answer (possibly several lines) follows ``\nシステム: ``.
    Training needs the exchanges to put ``</s>`` after each answer, while the text stays what the chat
    template renders.
    """
    opening, answer_opening = f"{USER}: ", f"\n{SYSTEM}: "
    if not text.startswith(opening):
        raise ValueError(f"dialogue does not open with {opening!r}: {text[:40]!r}")
    exchanges = []
    for block in text[len(opening) :].split(f"\n{opening}"):
        question, found, answer = block.partition(answer_opening)
        if not found or "\n" in question:
            raise ValueError(f"dialogue exchange without a one-line question and an answer: {block[:40]!r}")
        exchanges.append((question, answer))
    return exchanges


def demo_corpus(seed: int = 0) -> tuple[list[str], list[str]]:
    """(training dialogues, held-out dialogues), the same for the same seed on every run.

    Held-out dialogues that also occur verbatim in the training split are dropped and redrawn, so the
    held-out perplexity measures generalisation over the templates rather than recall.
    """
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise UserError(f"demo seed {seed!r}: must be a non-negative integer (the demo model's `seed` setting).")
    rng = random.Random(seed)
    train = [dialogue(rng) for _ in range(TRAIN_DIALOGUES)]
    seen = frozenset(train)
    heldout: list[str] = []
    while len(heldout) < HELDOUT_DIALOGUES:
        candidate = dialogue(rng)
        if candidate not in seen:
            heldout.append(candidate)
    return train, heldout


def write_dialogues(path: Path, dialogues: list[str]) -> None:
    """Write dialogues separated by one blank line (they contain single newlines, never blank lines)."""
    for text in dialogues:
        if "\n\n" in text or text != text.strip():
            raise ValueError(f"dialogue cannot be stored blank-line separated: {text!r}")
    Path(path).write_text("\n\n".join(dialogues) + "\n", encoding="utf-8", newline="\n")


def read_dialogues(path: Path) -> list[str]:
    """Read a file written by :func:`write_dialogues` (e.g. the demo's ``heldout.txt``)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: not found; expected a held-out text file with dialogues separated by blank lines.")
    text = path.read_text(encoding="utf-8").rstrip("\n")
    return text.split("\n\n") if text else []
