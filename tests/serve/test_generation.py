"""Text as llama-server makes it from token pieces: UTF-8 split across tokens, stop strings,
and text held back while it may still become a stop string."""

from __future__ import annotations

from cvgen.serve.generation import _held_back, _TextAssembler


def assemble(pieces: list[bytes], stop: tuple[str, ...] = ()) -> tuple[list[str], str, bool]:
    sent: list[str] = []
    text = _TextAssembler(stop, sent.append)
    stopped = False
    for piece in pieces:
        if text.add(piece):
            stopped = True
            break
    return sent, text.finish(), stopped


def test_a_character_split_across_tokens_is_sent_whole() -> None:
    snow = "❄".encode()  # three bytes
    sent, text, _ = assemble([b"a ", snow[:1], snow[1:2], snow[2:] + b" b"])
    assert text == "a ❄ b"
    assert sent == ["a ", "❄ b"]


def test_a_stop_string_cuts_the_text_before_it_even_across_pieces() -> None:
    sent, text, stopped = assemble([b"Hello wor", b"ld. Then", b" more"], stop=("world",))
    assert stopped and text == "Hello "
    assert "".join(sent) == "Hello "
    assert sent[0] == "Hello "  # "wor" was held back: it may begin "world"


def test_held_back_text_is_sent_once_it_cannot_be_a_stop() -> None:
    sent, text, stopped = assemble([b"say wo", b"w!"], stop=("world",))
    assert not stopped and text == "say wow!"
    assert sent == ["say ", "wow!"]
    assert _held_back("abc<|e", ("<|end|>", "x")) == 3
    assert _held_back("abc", ("<|end|>",)) == 0
