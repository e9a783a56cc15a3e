"""The first tokens of OpenAI CLIP's BPE vocabulary, built from the merges file the project ships.

The parity scripts give their tiny models a cut-down vocabulary (a 1000-token embedding instead of 49408) that
tokenizes exactly as the full one would with fewer merges: the 256 byte characters, their `</w>` forms, the first
merges, and the two special tokens, in OpenAI CLIP's order.
"""
import gzip
import json
import os
import shutil
import tempfile

MERGES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "Sources", "StableDiffusion", "Resources",
                      "bpe_simple_vocab_16e6.txt.gz")


def bytes_to_unicode():
    """OpenAI CLIP's table from bytes to printable characters, in its order."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for c in cs]


def truncated_vocabulary(size):
    """(tokens in id order, merges as "a b" lines) of the first `size` tokens of CLIP's vocabulary."""
    merges = gzip.open(MERGES).read().decode("utf-8").split("\n")[1:][: size - 512 - 2]
    tokens = bytes_to_unicode()
    tokens = tokens + [t + "</w>" for t in tokens] + ["".join(m.split()) for m in merges] + ["<|startoftext|>", "<|endoftext|>"]
    assert len(tokens) == size
    return tokens, merges


def write_tokenizer(folder, size, pad_token):
    """A transformers CLIPTokenizer folder of the first `size` tokens (vocab.json, merges.txt, special tokens),
    padding with `pad_token` to 77. Checks that ftfy is active: the training-time tokenizer cleans text with it."""
    from transformers import CLIPTokenizer

    vocab, merges = truncated_vocabulary(size)
    tmp = tempfile.mkdtemp()
    json.dump({t: i for i, t in enumerate(vocab)}, open(os.path.join(tmp, "vocab.json"), "w"))
    with open(os.path.join(tmp, "merges.txt"), "w") as f:
        f.write("#version: 0.2\n" + "\n".join(merges) + "\n")
    tok = CLIPTokenizer(os.path.join(tmp, "vocab.json"), os.path.join(tmp, "merges.txt"), pad_token=pad_token,
                        model_max_length=77)
    assert tok.fix_text is not None, "ftfy must be installed: the training-time tokenizer cleans text with it"
    tok.save_pretrained(folder)
    shutil.rmtree(tmp)
    return tok
