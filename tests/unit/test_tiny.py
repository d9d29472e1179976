"""The tiny-model tokenizer builder."""


def test_tiny_tokenizer_makes_every_word_one_token(tmp_path):
    from transformers import CLIPTokenizer

    from loramix.embedded.scenes import VOCABULARY
    from loramix.embedded.tiny import write_clip_tokenizer

    tok = CLIPTokenizer.from_pretrained(write_clip_tokenizer(tmp_path, VOCABULARY))
    for word in VOCABULARY:
        assert tok.tokenize(word) == [word + "</w>"], word
    assert len(tok.tokenize("zebra")) == 5  # unknown words still tokenize, letter by letter
