"""Text statistics of narrative person, tense, length and register, for axes whose effect a
plain count shows (`cvgen.eval.textstats` registers them). Each needs no model: word lists and
simple patterns on the generated text, written for English prose and checked on known strings
(tests/eval/test_style_stats.py).

- person: the share of first-person pronouns among first- and third-person ones;
- tense: the share of past-tense verb forms among past and present ones: irregular forms from
  a list, plus regular "-ed" forms, with words that only look like them left out;
- length: words per reply;
- register: contractions per word, casual words per word, both together per word, and words
  per sentence.

A share with nothing to count (no pronoun, no verb form found) is 0.5, the middle, so a reply
that says nothing about the trait does not pull a mean either way.
"""

from __future__ import annotations

import re
from statistics import fmean

_WORD = re.compile(r"[A-Za-z]+(?:['\u2019][A-Za-z]+)*")
_SENTENCE_END = re.compile(r"[.!?]+(?=\s|$)")


def _set(words: str) -> frozenset[str]:
    """A word list written as one string (kept readable in the source)."""
    return frozenset(words.split())


FIRST_PERSON = _set("i me my mine myself we us our ours ourselves")
THIRD_PERSON = _set("he him his himself she her hers herself they them their theirs themselves")
PAST_FORMS = _set("""
    was were had did said went came saw took made knew thought told found gave felt became left
    began ran stood sat got kept held brought wrote spoke heard met paid sent built fell grew
    drew drove ate fought flew forgot hid hung led lost meant rose sang sank slept spent stole
    struck swam threw understood woke wore won caught chose bought taught sought lay laid
""")
PRESENT_FORMS = _set("""
    is are am has have does do says goes comes sees takes makes knows thinks tells finds gives
    feels becomes leaves begins runs stands sits gets keeps holds brings writes speaks hears
    meets pays sends builds falls grows draws drives eats fights flies forgets hides hangs
    leads loses means rises sings sinks sleeps spends steals strikes swims throws understands
    wakes wears wins catches chooses buys teaches seeks lies lays
""")
# words ending in "ed" that are not past forms
NOT_PAST_ED = _set("""
    need bed red bred shed sled fed wed fled sped bleed breed creed deed feed freed greed heed
    indeed seed speed steed weed agreed hundred kindred naked sacred wicked wretched ragged
    rugged jagged crooked beloved learned aged blessed tired
""")
CASUAL_WORDS = _set("""
    yeah yep nope hey ok okay gonna wanna gotta kinda sorta stuff guys cool awesome totally
    super dude lol hmm wow nah yup pretty basically literally like anyway ya y'know bro
""")
_CONTRACTION = re.compile(r"['\u2019](?:t|re|ve|ll|d|m)$", re.IGNORECASE)
# "'s" is a contraction ("it's", "there's", "let's") only after these words; after a noun
# ("the captain's") it is mostly the possessive, which formal writing uses as much as any
S_CONTRACTED = _set("""
    it that there here what who where when why how he she let this everything nothing
    something someone everyone anyone nobody
""")


def _words(text: str) -> list[str]:
    return [word.lower().replace("\u2019", "'") for word in _WORD.findall(text)]


def _share(hits: int, others: int) -> float:
    return hits / (hits + others) if hits + others else 0.5


def first_person_share(text: str) -> float:
    """First-person pronouns over first- and third-person ones (0.5 when there are none)."""
    found = _words(text)
    first = sum(word in FIRST_PERSON for word in found)
    third = sum(word in THIRD_PERSON for word in found)
    return _share(first, third)


def _is_past(word: str) -> bool:
    if word in PAST_FORMS:
        return True
    return len(word) > 4 and word.endswith("ed") and word not in NOT_PAST_ED


def past_tense_share(text: str) -> float:
    """Past-tense verb forms over past and present ones (0.5 when none is found)."""
    found = _words(text)
    past = sum(_is_past(word) for word in found)
    present = sum(word in PRESENT_FORMS for word in found)
    return _share(past, present)


def words_per_reply(text: str) -> float:
    """The number of words in the reply."""
    return float(len(_words(text)))


def _is_contraction(word: str) -> bool:
    if word.endswith("'s"):
        return word[:-2] in S_CONTRACTED
    return bool(_CONTRACTION.search(word))


def contraction_rate(text: str) -> float:
    """Contractions ("don't", "it's", "we'll"; not the possessive "the captain's") per word
    (0 for a text with no word)."""
    found = _words(text)
    return sum(_is_contraction(word) for word in found) / len(found) if found else 0.0


def casual_word_rate(text: str) -> float:
    """Casual words ("yeah", "gonna", "stuff", ...) per word (0 for a text with no word)."""
    found = _words(text)
    return sum(word in CASUAL_WORDS for word in found) / len(found) if found else 0.0


def casual_rate(text: str) -> float:
    """Contractions and casual words together, per word (0 for a text with no word): the
    register's one count of both marks of chatty writing."""
    found = _words(text)
    marks = sum(_is_contraction(word) or word in CASUAL_WORDS for word in found)
    return marks / len(found) if found else 0.0


def words_per_sentence(text: str) -> float:
    """Mean words per sentence; a text without a closing stop is one sentence (0 if empty)."""
    pieces = [piece for piece in _SENTENCE_END.split(text) if _words(piece)]
    return fmean(len(_words(piece)) for piece in pieces) if pieces else 0.0
