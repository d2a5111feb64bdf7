"""The embedded corpus's English: a word list this project wrote and a small
sentence grammar over it, so that word order is learnable but sentences are
many (about 10^9 distinct ones)."""

import random
from typing import List

DETERMINERS = "the a this that every my your our their one".split()
ADJECTIVES = (
    "red blue green yellow black white small large old young quiet loud bright dark warm cold "
    "happy sad quick slow heavy light clean dirty soft hard rich poor early late busy empty "
    "famous gentle honest lucky brave calm clever proud strange simple tall short wide narrow "
    "sweet bitter fresh tired hungry silent golden silver wooden friendly"
).split()
NOUNS = (
    "cat dog bird horse fish farmer teacher doctor driver child woman man king queen city river "
    "garden window table chair house road car boat train bridge tree flower apple bread letter "
    "book song story picture mountain island forest village market school kitchen door wall "
    "friend neighbour stranger student captain sailor baker painter singer soldier lamp clock "
    "hat coat shoe cup plate basket bottle candle ladder wagon castle tower church valley lake "
    "field hill stone cloud star moon"
).split()
VERBS = (
    "sees finds likes carries follows watches paints builds cleans opens closes sells buys "
    "helps calls visits moves pushes pulls holds keeps leaves meets reads writes brings takes "
    "wants needs remembers forgets draws catches throws washes"
).split()
PREPOSITIONS = "near behind under over beside inside outside across".split()
ADVERBS = "today slowly quickly again often never always suddenly quietly gladly".split()
NUMBERS = "two three four five six seven eight nine ten twelve twenty".split()

VOCABULARY = sorted(
    set(DETERMINERS + ADJECTIVES + NOUNS + VERBS + PREPOSITIONS + ADVERBS + NUMBERS)
)


IRREGULAR_PLURALS = {"man": "men", "woman": "women", "child": "children", "shoe": "shoes"}


def plural(noun: str) -> str:
    if noun in IRREGULAR_PLURALS:
        return IRREGULAR_PLURALS[noun]
    if noun.endswith("y") and noun[-2] not in "aeiou":
        return noun[:-1] + "ies"
    if noun.endswith(("s", "x", "ch", "sh")):
        return noun + "es"
    return noun + "s"


def noun_phrase(rng: random.Random, allow_plural: bool = True) -> List[str]:
    if allow_plural and rng.random() < 0.2:
        return [rng.choice(NUMBERS), rng.choice(ADJECTIVES), plural(rng.choice(NOUNS))]
    words = [rng.choice(DETERMINERS)]
    if rng.random() < 0.7:
        words.append(rng.choice(ADJECTIVES))
    return words + [rng.choice(NOUNS)]


def sentence(rng: random.Random) -> str:
    """One sentence: subject, verb, object, and sometimes a place or an adverb."""
    # a singular subject, so the verbs' -s always agrees
    words = noun_phrase(rng, allow_plural=False) + [rng.choice(VERBS)] + noun_phrase(rng)
    if rng.random() < 0.4:
        words += [rng.choice(PREPOSITIONS)] + noun_phrase(rng)
    if rng.random() < 0.3:
        words.append(rng.choice(ADVERBS))
    return " ".join(words)
