"""The atomizer on advertiser-style fragments: terse selling points the small parser gets wrong."""

from __future__ import annotations

import threading

import pytest

from kdcvg.text.atomizer import Atomizer, SemanticUnit, names_motion, pick_core

# phrase -> the core unit's (motion, actor, recipient); a set lists acceptable motions.
CORE = [
    ("spins to show every angle", "spin", "", ""),
    ("a golden retriever chases a red ball", "chase", "retriever", "ball"),
    ("360° look at the bottle", "look", "", "bottle"),
    ("glides smoothly to the left", {"glide left"}, "", ""),
    ("glides to the left", {"glide left"}, "", ""),
    ("bottle spinning on a table", "spin", "bottle", "table"),
    ("the bottle rotates slowly", "rotate", "bottle", ""),
    ("zooms in on the label", {"zoom in", "zoom"}, "", "label"),
    ("zoom in on the label", {"zoom in", "zoom"}, "", "label"),
    ("watch floating above the table", "float", "watch", "table"),
    ("slide left", "slide left", "", ""),
    ("turn around", "turn around", "", ""),
    ("the camera pans across the kitchen", "pan", "camera", "kitchen"),
    ("juice bottle spinning", "spin", "juice bottle", ""),
    ("bubbles rise in the glass", "rise", "bubble", "glass"),
    ("sneakers bouncing on the pavement", "bounce", "sneaker", "pavement"),
    ("the lid pops open", "pop open", "lid", ""),
    ("steam rises from the coffee cup", "rise", "steam", "coffee cup"),
    ("the phone flips over to show the screen", "flip over", "phone", ""),
    ("water splashes onto the watch", "splash", "water", "watch"),
    ("the bottle is spun by a hand", "spin", "hand", "bottle"),
    ("the dog that chases the ball", "chase", "dog", "ball"),
    ("a woman applies cream to her face", "apply", "woman", "face"),
    ("rotates 360 degrees", "rotate", "", ""),
    ("melts in your mouth", "melt", "", "mouth"),
    ("a spinning bottle", "spin", "bottle", ""),
    ("close-up of the lipstick twisting up", "twist up", "lipstick", ""),
    ("earbuds pop out of the case", "pop out", "earbud", "case"),
    ("A chef slices tomatoes on a wooden board.", "slice", "chef", "tomato"),
    ("hands unwrap a gift box", "unwrap", "hand", "gift box"),
    ("smartphone slides out of the pocket", "slide out", "smartphone", "pocket"),
    ("coffee pouring into a white mug", "pour", "coffee", "mug"),
    ("slow motion pour", "pour", "", ""),
    ("SPINS TO SHOW EVERY ANGLE", "spin", "", ""),
    ('"Spins!"', "spin", "", ""),
    # "left" after a motion word or a preposition is a direction the small model reads as the verb "leave".
    ("slides left into the spotlight", "slide left", "", "spotlight"),
    ("sweeps left across the screen", "sweep left", "", "screen"),
    ("A phone slides left across the frame.", "slide left", "phone", "frame"),
    ("the jar jiggles left and right", "jiggle", "jar", ""),  # to and fro: no one direction
    ("A silver jar of honey jiggles left and right.", "jiggle", "jar", ""),
    ("the phone slides left", "slide left", "phone", ""),
    ("bobs up and down", "bob", "", ""),
    ("slides from left to right", "slide right", "", ""),
    ("A red shoe slides from right to left.", "slide left", "shoe", ""),
    ("sweeps right across the frame", "sweep right", "", "frame"),
    ("slides right into the spotlight", "slide right", "", "spotlight"),
    ("jumps right off the floor", "jump", "", "floor"),  # "right" only stresses "off"
    # Version 3: motion verbs the small model knows only as nouns after a noun ("mug throbs").
    ("A silver travel mug throbs like a heartbeat on a teal background.", "throb", "travel mug", "heartbeat"),
    # Version 4: an -s motion verb read as a noun after its subject, in a sentence without a finite verb.
    ('A yellow jar of honey hovers in mid-air, with the words "FREE SHIPPING" shown.', "hover", "jar", "mid"),
    (
        "A white mug of hot cocoa glides to the left against a charcoal backdrop.",
        {"glide left"},
        "mug",
        "charcoal backdrop",
    ),
    ("A pink cup of coffee spins around its centre.", "spin", "cup", "centre"),
    ("A green smartphone pulses in and out on a burgundy background.", "pulse", "smartphone", "background"),
    ("honey hovers in mid-air", "hover", "honey", "mid"),
    # ... and the motion verb is the core over a side clause's verb
    ('A black smartwatch glides to the right, with the words "FREE SHIPPING" shown.', "glide right", "smartwatch", ""),
    ("recedes for the big picture", "recede", "", "picture"),
    ("loops around to catch the eye", "loop around", "", ""),
    # Version 5: ... or before "and" and the finite verb it is coordinated with.
    ("A jar of honey swells and settles against a pink backdrop.", "swell", "jar", ""),
    ("A bag of chips swells and settles again and again.", "swell", "bag", ""),
    # ... or after words opened by "a", which a plural noun cannot end ("watch" was read as the verb).
    ("A gold luxury watch hovers in mid-air against a peach backdrop.", "hover", "gold luxury watch", "mid"),
    ("A black backpack hovers in mid-air against a lavender backdrop.", "hover", "backpack", "mid"),
]

# No verb at all: one unit, empty motion, the head noun (if any) as actor. Nouns that are also verbs
# ("bottles", "glass") must not turn into motions.
VERBLESS = [
    ("50% off today", ""),
    ("new formula, twice the shine", "formula"),
    ("free shipping on all orders", "shipping"),
    ("glass bottles on a table", "glass bottle"),
    ("bottles of juice", "bottle"),
    ("stunning design", "design"),
]

EVERYTHING = (
    [c[0] for c in CORE]
    + [v[0] for v in VERBLESS]
    + [
        "hands pick up the phone and unlock it",
        "a dog and a cat chase a ball",
        "pours juice into a glass",
        "The vacuum cleaner glides under the sofa and picks up dust.",
        "A woman in a red dress walks along the beach at sunset. Waves roll onto the sand.",
    ]
)


def core(units: list[SemanticUnit]) -> SemanticUnit:
    cores = [u for u in units if u.core]
    assert len(cores) == 1, units
    return cores[0]


@pytest.mark.parametrize(("phrase", "motion", "actor", "recipient"), CORE, ids=[c[0] for c in CORE])
def test_core_unit(atomizer: Atomizer, phrase, motion, actor, recipient):
    unit = core(atomizer.atomize(phrase))
    motions = motion if isinstance(motion, set) else {motion}
    assert (unit.motion in motions, unit.actor, unit.recipient) == (True, actor, recipient), unit


@pytest.mark.parametrize(("phrase", "actor"), VERBLESS, ids=[v[0] for v in VERBLESS])
def test_verbless_phrase_keeps_the_head_noun(atomizer: Atomizer, phrase, actor):
    assert atomizer.atomize(phrase) == [SemanticUnit("", actor, "", True)]


def test_every_verb_forms_a_unit(atomizer: Atomizer):
    units = atomizer.atomize("hands pick up the phone and unlock it")
    assert [(u.motion, u.actor, u.recipient, u.core) for u in units] == [
        ("pick up", "hand", "phone", True),
        ("unlock", "hand", "", False),  # subject inherited over "and"; "it" points elsewhere
    ]
    spins = atomizer.atomize("spins to show every angle")
    assert {(u.motion, u.recipient) for u in spins} == {("spin", ""), ("show", "angle")}


def test_each_conjoined_subject_is_a_unit(atomizer: Atomizer):
    units = atomizer.atomize("a dog and a cat chase a ball")
    assert {(u.motion, u.actor, u.recipient) for u in units} == {
        ("chase", "dog", "ball"),
        ("chase", "cat", "ball"),
    }
    assert core(units).actor == "dog"


def test_caption_sentences_each_take_the_fallbacks(atomizer: Atomizer):
    caption = (
        "A woman in a red dress walks along the beach at sunset. Waves roll onto the sand. "
        "The camera slowly pans to reveal the resort."
    )
    units = atomizer.atomize(caption)
    # The first sentence alone is a misparse ("walks" as a noun) that only the fallbacks recover.
    assert core(units) == SemanticUnit("walk", "woman", "beach", True)
    assert {(u.motion, u.actor, u.recipient) for u in units} >= {("roll", "wave", "sand"), ("pan", "camera", "")}


def test_core_is_the_first_sentence_core_with_a_motion(atomizer: Atomizer):
    units = atomizer.atomize("New formula. Spins to show every angle.")
    assert core(units).motion == "spin"
    assert SemanticUnit("", "formula", "", False) in units


def test_a_motion_verb_is_the_core_over_an_earlier_sentence_with_another_verb(atomizer: Atomizer):
    units = atomizer.atomize("Made with natural ingredients. Glides to the right.")
    assert core(units) == SemanticUnit("glide right", "", "", True)
    assert SemanticUnit("make", "", "ingredient", False) in units


def unit(motion: str, core: bool = False) -> SemanticUnit:
    return SemanticUnit(motion, "", "", core)


def test_pick_core_order():
    save, glide, show, spin = unit("save", True), unit("glide right", True), unit("show", True), unit("spin")
    offer = unit("", True)
    # 1. a core that is a motion verb, wherever its group is
    assert pick_core([[save], [offer], [glide]]) is glide
    # 2. else any unit that is one: a caption rooted at "shown" with "spins" below it
    assert pick_core([[save], [show, spin]]) is spin
    # 3. else a core with some verb, 4. else the first core
    assert pick_core([[offer], [save], [show]]) is save
    assert pick_core([[offer], [unit("", True)]]) is offer
    assert pick_core([[unit("")]]).motion == ""
    with pytest.raises(ValueError):
        pick_core([[], []])


def test_pick_core_puts_a_motion_named_by_a_noun_after_motion_verbs():
    reveal = SemanticUnit("reveal", "side", "", True, nominal=True)
    sweep, save, spin = unit("sweep right", True), unit("save", True), unit("spin")
    assert pick_core([[reveal], [sweep]]) is sweep  # a core motion verb in a later group
    assert pick_core([[reveal], [save, spin]]) is spin  # any unit that is a motion verb
    assert pick_core([[save], [reveal]]) is reveal  # still a motion: it beats a verb that is none
    assert pick_core([[unit("", True)], [reveal]]) is reveal


@pytest.mark.parametrize(
    ("text", "nominal"),
    [("a smooth side reveal", True), ("slow motion pour", True), ("bottle spin", True), ("sweeps right", False)],
)
def test_a_motion_named_by_a_noun_is_marked_nominal(atomizer: Atomizer, text, nominal):
    assert core(atomizer.atomize(text)).nominal is nominal


def test_core_first_prefers_a_motion_verb_to_a_motion_noun(atomizer: Atomizer):
    from kdcvg.knowledge.base import core_first

    units = core_first([atomizer.atomize(p) for p in ["a smooth side reveal", "sweeps right across the screen"]])
    assert core(units) == SemanticUnit("sweep right", "", "screen", True)
    assert SemanticUnit("reveal", "side", "", False, nominal=True) in units


@pytest.mark.parametrize(
    ("motion", "expected"),
    [("glide right", True), ("spin", True), ("throb", True), ("make", False), ("save", False), ("", False)],
)
def test_names_motion(motion, expected):
    assert names_motion(motion) is expected


@pytest.mark.parametrize(("text", "actor"), [("!!!", ""), ("100%", ""), ("🔥🔥 hot deal 🔥", "deal")])
def test_odd_text_gives_one_empty_motion_unit(atomizer: Atomizer, text, actor):
    assert atomizer.atomize(text) == [SemanticUnit("", actor, "", True)]


@pytest.mark.parametrize("phrase", EVERYTHING)
def test_exactly_one_core_and_lowercase_lemmas(atomizer: Atomizer, phrase):
    units = atomizer.atomize(phrase)
    assert units
    assert sum(u.core for u in units) == 1
    for u in units:
        for s in (u.motion, u.actor, u.recipient):
            assert s == s.lower() == s.strip()
            assert "  " not in s
    # Adjectives, determiners and numbers never reach a unit.
    words = {w for u in units for s in (u.actor, u.recipient) for w in s.split()}
    assert not words & {"a", "the", "golden", "red", "white", "wooden", "every", "360", "50", "slowly"}


@pytest.mark.parametrize("text", ["", " ", "\t\n  "])
def test_blank_text_gives_no_units(atomizer: Atomizer, text):
    assert atomizer.atomize(text) == []
    assert atomizer.atomize_many([text, "the bottle rotates", text])[::2] == [[], []]


def test_batch_equals_single(atomizer: Atomizer):
    fresh = Atomizer(nlp=atomizer.nlp, cache_size=0)  # shares the model, not the cache
    batch = fresh.atomize_many(EVERYTHING + EVERYTHING[:3])
    single = [Atomizer(nlp=atomizer.nlp, cache_size=0).atomize(p) for p in EVERYTHING]
    assert batch[: len(EVERYTHING)] == single
    assert batch[len(EVERYTHING) :] == single[:3]


def test_cache_returns_copies(atomizer: Atomizer):
    first = atomizer.atomize("the bottle rotates slowly")
    first.clear()
    assert atomizer.atomize("the bottle rotates slowly") == [SemanticUnit("rotate", "bottle", "", True)]
    # Spacing and shouting normalise to the same text.
    assert atomizer.atomize("  THE BOTTLE   ROTATES SLOWLY ") == atomizer.atomize("the bottle rotates slowly")


def test_threads_agree(atomizer: Atomizer):
    shared = Atomizer(nlp=atomizer.nlp, cache_size=8)  # small cache: threads also evict
    expected = [Atomizer(nlp=atomizer.nlp).atomize(p) for p in EVERYTHING]
    errors: list[BaseException] = []

    def work(offset: int) -> None:
        try:
            order = EVERYTHING[offset:] + EVERYTHING[:offset]
            got = shared.atomize_many(order)
            assert got == expected[offset:] + expected[:offset]
        except BaseException as exc:  # noqa: BLE001 - reported in the main thread
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(k * 7,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[0]


def _ad_copy() -> list[str]:
    from kdcvg.data.creatives import describe, sample_spec

    texts = list(EVERYTHING)
    for seed in range(200):
        caption, points = describe(sample_spec(seed))
        texts += [caption, *points]
    return list(dict.fromkeys(texts))


def test_guessed_templates_change_no_result(atomizer: Atomizer):
    texts = _ad_copy()
    plain = Atomizer(nlp=atomizer.nlp, guess=False)
    want = [plain.atomize(t) for t in texts]
    assert [Atomizer(nlp=atomizer.nlp, guess=True).atomize(t) for t in texts] == want
    assert Atomizer(nlp=atomizer.nlp, guess=True).atomize_many(texts) == want


def test_a_fragment_with_a_guessed_template_takes_one_spacy_batch(atomizer: Atomizer):
    batches: dict[bool, list[list[str]]] = {}
    for guess in (False, True):
        at = Atomizer(nlp=atomizer.nlp, guess=guess)
        calls = batches[guess] = []
        real = at._pipe
        at._pipe = lambda texts, real=real, calls=calls: calls.append(list(texts)) or real(texts)
        assert at.atomize("zooms out to show the whole box")[0].motion == "zoom out"
    assert batches[False] == [["zooms out to show the whole box"], ["It zooms out to show the whole box."]]
    assert batches[True] == [["zooms out to show the whole box", "It zooms out to show the whole box."]]


def test_openers_that_parsed_soundly_skip_the_guess_and_change_no_result(atomizer: Atomizer):
    texts = _ad_copy()
    want = [Atomizer(nlp=atomizer.nlp, guess=False).atomize(t) for t in texts]
    for order in (texts, list(reversed(texts))):
        learning = Atomizer(nlp=atomizer.nlp, guess=True)  # one instance: it learns as it goes
        got = {t: learning.atomize(t) for t in order}
        assert [got[t] for t in texts] == want
        assert learning._openers  # it did learn

    at = Atomizer(nlp=atomizer.nlp, guess=True)
    calls: list[list[str]] = []
    real = at._pipe
    at._pipe = lambda texts: calls.append(list(texts)) or real(texts)
    at.atomize("rotates for a full view of the mug")  # sound as given: its template was parsed for nothing
    assert calls == [["rotates for a full view of the mug", "It rotates for a full view of the mug."]]
    calls.clear()
    assert core(at.atomize("rotates for a full view of the lamp")).motion == "rotate"
    assert calls == [["rotates for a full view of the lamp"]]  # no guess this time
    # An opener whose fragment needs its template after all: a second round, and the guess is back.
    at._openers["zooms"] = True
    calls.clear()
    assert core(at.atomize("zooms out to show the whole box")).motion == "zoom out"
    assert calls == [["zooms out to show the whole box"], ["It zooms out to show the whole box."]]
    calls.clear()
    at.atomize("zooms out to show the whole lamp")
    assert calls == [["zooms out to show the whole lamp", "It zooms out to show the whole lamp."]]


def test_left_as_a_verb_stays_a_verb(atomizer: Atomizer):
    """The repair of misread directions leaves "left" alone where it is the verb."""
    assert core(atomizer.atomize("the bottle was left on the table")).motion == "leave"
    assert core(atomizer.atomize("glass bottles left on a table")).motion == "leave"


def test_lookup_answers_from_the_cache_while_a_parse_runs(atomizer: Atomizer):
    """A search whose phrases were parsed before never waits for another search's parse."""
    atomizer.atomize("spins to show every angle")
    with atomizer._parse_lock:  # as while another thread parses
        got = atomizer.lookup(["spins to show every angle"])
        assert got is not None and core(got[0]).motion == "spin"
        assert atomizer.lookup(["spins to show every angle", "a phrase never parsed before"]) is None


def test_core_first_takes_the_motion_phrase_of_a_query(atomizer: Atomizer):
    from kdcvg.knowledge.base import core_first

    points = ["save 30% today", "glides smoothly to the right", "made with natural ingredients"]
    units = core_first([atomizer.atomize(p) for p in points])
    assert core(units) == SemanticUnit("glide right", "", "", True)
    assert [u.motion for u in units] == ["save", "glide right", "make"]


@pytest.mark.parametrize(
    ("text", "motion"),
    [
        ("A silver spray cleaner floats gently up and down on a charcoal gradient background.", "float"),
        ("A gold microwave oven spins around its centre against a dark green backdrop.", "spin"),
    ],
)
def test_a_product_name_read_as_a_verb_leaves_the_motion_its_verb(atomizer: Atomizer, text, motion):
    # "spray" and "oven" are read as the verb and the motion word as a noun; "A" tells which is which.
    assert core(atomizer.atomize(text)).motion == motion


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("chocolate swirls decorate the cake", ("decorate", "chocolate swirl", "cake")),  # a finite verb: nouns stay
        ("chocolate swirls and sprinkles decorate the cake", ("decorate", "chocolate swirl", "cake")),
        ("A bakery sells fresh rolls", ("sell", "bakery", "roll")),  # "a" opens "bakery", not "rolls"
        ("An artisan bakery with fresh rolls", ("", "bakery", "")),
        ("The store sells bottle spins", ("sell", "store", "bottle spin")),
        ("water bottles on sale", ("", "water bottle", "")),  # "bottles" is no motion verb
    ],
)
def test_nouns_in_s_stay_nouns_beside_a_finite_verb(atomizer: Atomizer, text, expected):
    unit = core(atomizer.atomize(text))
    assert (unit.motion, unit.actor, unit.recipient) == expected
