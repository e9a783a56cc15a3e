#!/usr/bin/env python3
"""Fixtures for CLIPTokenizerTests: what transformers' slow CLIPTokenizer (4.x, with ftfy) makes of a set of prompts.

Run by hand:  python3 scripts/parity/make_tokenizer_fixtures.py   (needs "transformers<5" and ftfy; no downloads)
Writes
  Tests/StableDiffusionTests/Fixtures/tokenizer/ids.json
      for each prompt: the text, the cleaned text (ftfy.fix_text, whitespace collapsing, lower-casing), and for both
      pad conventions (SD1.x pads with <|endoftext|>, SD2 with "!", which also makes "!" an added token): the ids
      without special tokens (encode), the model input ids with truncation=True and padding="max_length" to 77
      (stored up to <|endoftext|>; the script checks that the rest is the pad id, the tests pad them back), the raw
      decode of the ids, and the text of the tokens that truncation dropped.
  Sources/StableDiffusion/Resources/html_entities.tsv
      ftfy's table of HTML entities (Python's html5 entities ending in ";", plus the all-caps forms ftfy accepts),
      one "&name;<TAB>hex code points" per line, which TextCleaning.swift reads.

The tokenizer folders are built in a temporary directory from the open_clip merges file that the StableDiffusion
target ships (bpe_simple_vocab_16e6.txt.gz), the way OpenAI CLIP derives its vocabulary, so nothing is downloaded.
transformers 5 dropped the ftfy cleaning from CLIPTokenizer; the fixtures follow the tokenizer Stable Diffusion
was trained and is run with (4.x with ftfy), so this script refuses to run under transformers 5.
"""
import csv
import gzip
import json
import os
import sys
import tempfile

import ftfy
import ftfy.chardata
import transformers
from transformers import CLIPTokenizer
from transformers.models.clip.tokenization_clip import bytes_to_unicode, whitespace_clean

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
GZ = os.path.join(ROOT, "Sources", "StableDiffusion", "Resources", "bpe_simple_vocab_16e6.txt.gz")
OUT = os.path.join(ROOT, "Tests", "StableDiffusionTests", "Fixtures", "tokenizer")
ENTITIES = os.path.join(ROOT, "Sources", "StableDiffusion", "Resources", "html_entities.tsv")
PARTI = os.environ.get("PARTI_PROMPTS", "/work/shared/data/PartiPrompts.tsv")
MAX_LENGTH = 77

assert int(transformers.__version__.split(".")[0]) < 5, "needs transformers 4.x (5 dropped ftfy cleaning)"


def write_folder(folder, pad_token):
    """A tokenizer folder as diffusers ships one (vocab.json, merges.txt, special_tokens_map, tokenizer_config)."""
    merges = gzip.open(GZ).read().decode("utf-8").split("\n")[1 : 49152 - 256 - 2 + 1]
    vocab = list(bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab]
    vocab += ["".join(m.split()) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    os.makedirs(folder)
    with open(os.path.join(folder, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump({token: i for i, token in enumerate(vocab)}, f, ensure_ascii=False)
    with open(os.path.join(folder, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n" + "\n".join(merges) + "\n")
    special = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>",
               "pad_token": pad_token}
    with open(os.path.join(folder, "special_tokens_map.json"), "w") as f:
        json.dump(special, f)
    with open(os.path.join(folder, "tokenizer_config.json"), "w") as f:
        json.dump(dict(special, model_max_length=MAX_LENGTH, tokenizer_class="CLIPTokenizer"), f)


def parti_prompts():
    with open(PARTI, encoding="utf-8") as f:
        rows = [line.rstrip("\n").split("\t")[0] for line in f][1:]
    chosen = rows[:20] + rows[49::50]                       # the first ones, then a spread over the file
    chosen.append(max(rows, key=len))                      # the longest one (truncated at 77)
    return list(dict.fromkeys(chosen))


HAND_WRITTEN = [
    "Café crème brûlée on a naïve façade",
    "Über den Straßen von München, GRÖSSE und Größe",
    "日本語のプロンプト、東京の夜景",
    "a painting 🎨 of a cat 🐱 by a 👩‍🎨 artist 🇯🇵 👍🏽",
    "Ελληνικά: ΟΔΟΣ ΠΡΟΣ ΤΗΝ ΑΚΡΟΠΟΛΗ, Σ, ΑΣ. ΑΣΑ",
    "ＡＢＣ１２３　ｆｕｌｌ－ｗｉｄｔｈ！",
    "Ｕﾀｰﾝ halfwidth katakana ｶﾞｷﾞ",
    "ﬁne ﬂowers ﬀ ﬃ ﬄ ﬅ ﬆ Ĳssel ǅ Ǆ ǆ",
    "“Quoted” and ‘single’ it’s ‛odd‟ ʼn",
    "&amp; &lt;b&gt; bold &quot;x&quot; &#39;y&#39; &eacute;t&eacute; &hellip; &mdash; &nbsp;end",
    "&amp;amp; double escaped &amp;lt;tag&amp;gt;",
    "<b>html &amp; tags</b>",
    "line one &amp;\n<tag> line two &amp; after",
    "P&EACUTE;REZ BUNDESSTRA&SZLIG;E &NTILDE; &nTILDE; &Jscr;ohn &#x1F600; &#128512; &#59; &#0; &#x110000; &#12ab;",
    "&#65;&#x42;&#X43; &#13; &#129; &#128; &#150; &notanentity; &amp &AMP; &Amp;",
    "1,234.5 and 3.14159 on 2024-01-01 at 10:30pm ½ ² ٣ Ⅻ",
    "it's they're I'll we've you'd I'm don't IT'S THEY'RE 'salt 'sun ''s",
    "it'ſ the long s: 'ſun <|ſtartoftext|> and the Kelvin sign 'K",    # IGNORECASE folds ſ to s
    "many    spaces\tand\ttabs\nand\nnewlines\r\nand crlf \u2028 sep \u00a0nbsp\u3000ideographic \u2009thin",
    "!!!???... wow!!! ?! ...? !",
    "wow! amazing!! hello!world",
    "",
    "   \t\n  ",
    "MiXeD CaSe PROMPT With CAPITALS",
    "state-of-the-art well-known x-ray t-shirt",
    "https://example.com/path?q=a+b&x=1 and www.test.org/~user",
    "email@example.com #hashtag @user $100 50% ^_^ (parens) [brackets] {braces} <angle>",
    "a<|endoftext|>b <|ENDOFTEXT|> <|startoftext|>start",
    "İstanbul Ⅻ ǲ Kelvin K",
    "ypogegrammeni a\u0345b !\u0345! \u03b1\u0345 \u1fb3 \u0391\u0345",    # U+0345 matches no alternative
    "\x1b[31mred\x1b[0m terminal escape",
    "control\x00chars\x07here\u200bzero\u200dwidth\ufeffbom\x7f",
    "C1 controls \x80 \x85 \x93quoted\x94",
    "e\u0301 decomposed and A\u030a ring, \u1100\u1161 jamo",
    "한국어 프롬프트 Привет мир العربية हिन्दी",
    "a photo of a cat's toy, 4k, ultra-detailed, trending on artstation, 8K UHD",
    " ".join(["word"] * 75),
    " ".join(["word"] * 76),
    " ".join(["a"] * 74) + " \ua66e\U0010fffd",             # truncation cuts inside a character's bytes
    "A highly detailed matte painting of a futuristic cyberpunk city at night, neon lights reflecting on wet streets, "
    "flying cars, towering skyscrapers with holographic advertisements, crowded markets, steam rising from vents, "
    "cinematic lighting, volumetric fog, ultra wide angle, octane render, unreal engine 5, trending on artstation, "
    "by Greg Rutkowski and Syd Mead, 8k resolution, award winning",
    "an astronaut riding a horse 🐎🐎🐎🐎🐎🐎🐎🐎🐎🐎🐎🐎🐎🐎🐎🐎🐎🐎🐎🐎🐎🐎🐎🐎🐎🐎🐎🐎🐎🐎🐎🐎🐎🐎🐎🐎🐎",
]


def main():
    prompts = parti_prompts() + HAND_WRITTEN
    with tempfile.TemporaryDirectory() as tmp:
        tokenizers = {}
        for name, pad in [("sd1", "<|endoftext|>"), ("sd2", "!")]:
            write_folder(os.path.join(tmp, name), pad)
            t = CLIPTokenizer.from_pretrained(os.path.join(tmp, name))
            assert t.fix_text is not None, "ftfy is not active"
            assert len(t) == 49408 and t.bos_token_id == 49406 and t.eos_token_id == 49407
            assert t.model_max_length == MAX_LENGTH
            tokenizers[name] = t
        sd1, sd2 = tokenizers["sd1"], tokenizers["sd2"]
        assert sd1.pad_token_id == 49407 and sd2.pad_token_id == 0
        records = []
        for text in prompts:
            record = {"text": text, "cleaned": whitespace_clean(ftfy.fix_text(text)).lower()}
            for name, t in tokenizers.items():
                encoded = t.encode(text, add_special_tokens=False)
                input_ids = t(text, padding="max_length", max_length=MAX_LENGTH, truncation=True).input_ids
                # Stored without the padding, which is checked here: the tests pad with the fixture's pad id.
                used = min(len(encoded), MAX_LENGTH - 2) + 2
                assert len(input_ids) == MAX_LENGTH and input_ids[used:] == [t.pad_token_id] * (MAX_LENGTH - used)
                dropped = encoded[MAX_LENGTH - 2:]
                record[name] = {
                    "encoded": encoded,
                    "input_ids": input_ids[:used],
                    "decoded": t.convert_tokens_to_string(t.convert_ids_to_tokens(encoded)),
                    "dropped": t.convert_tokens_to_string(t.convert_ids_to_tokens(dropped)) if dropped else None,
                }
            records.append(record)
    os.makedirs(OUT, exist_ok=True)
    with open(os.path.join(OUT, "ids.json"), "w", encoding="utf-8") as f:
        f.write('{"transformers": %s, "ftfy": %s, "max_length": %d, "pad_token_id": {"sd1": %d, "sd2": %d},\n' % (
            json.dumps(transformers.__version__), json.dumps(ftfy.__version__), MAX_LENGTH, sd1.pad_token_id,
            sd2.pad_token_id))
        f.write('"prompts": [\n')
        f.write(",\n".join(json.dumps(r, ensure_ascii=False, separators=(",", ":")) for r in records))
        f.write("\n]}\n")
    with open(ENTITIES, "w", encoding="utf-8") as f:
        for name, value in sorted(ftfy.chardata.HTML_ENTITIES.items()):
            f.write("%s\t%s\n" % (name, " ".join("%X" % ord(c) for c in value)))
    print("wrote %d prompts to %s and %d entities to %s" % (
        len(records), OUT, len(ftfy.chardata.HTML_ENTITIES), ENTITIES))


if __name__ == "__main__":
    main()
