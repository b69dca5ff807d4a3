"""Every task's phrasings (several per task, the index kept per sample) and the catalog's words."""
from __future__ import annotations

from dataclasses import dataclass

from .names import SESSION


# Phrasings. Fields: {noun} {nouns} {verb} {verb_ing} {people} {People} (catalog words), {sid} {title} {text}
# {history} {n} {prefix} {span} {label} {prefs} {rec}, and in answers {sids} {category} {labels}.
TEMPLATES: dict[str, list[tuple[str, str]]] = {
    "title_to_sid": [
        ('What is the semantic ID of the {noun} "{title}"?', "{sid}"),
        ('Give me the SID of "{title}".', "{sid}"),
        ('Find the {noun} titled "{title}".', "{sid}"),
        ("{title}\nWhich item is this?", "{sid}"),
    ],
    "description_to_sid": [
        ("Which {noun} matches this description?\n{text}", "{sid}"),
        ("Find the item described below.\n{text}", "{sid}"),
        ("Description: {text}\nWhat is its semantic ID?", "{sid}"),
    ],
    "features_to_sid": [
        ("Which {noun} has these features?\n{text}", "{sid}"),
        ("Find the {noun} with the following features:\n{text}", "{sid}"),
        ("Features:\n{text}\nWhich item is it?", "{sid}"),
    ],
    "title_prefix_to_sid": [
        ('Which {noun} has a title starting with "{prefix}"?', "{sid}"),
        ('Find the {noun} whose title begins with "{prefix}".', "{sid}"),
        ('Complete the title and give the item: "{prefix} ..."', "{sid}"),
    ],
    "title_contains_to_sid": [
        ('Which {noun} has "{span}" in its title?', "{sid}"),
        ('Find the {noun} whose title contains "{span}".', "{sid}"),
        ('I remember the words "{span}" from the title. Which {noun} is it?', "{sid}"),
    ],
    "sid_to_title": [
        ("What is the title of {sid}?", "{title}"),
        ("Name the {noun} {sid}.", "{title}"),
        ("{sid}\nWhat is this item called?", "{title}"),
    ],
    "sid_to_description": [
        ("Describe {sid}.", "{text}"),
        ("What is {sid} about?", "{text}"),
        ("Give me a short description of the {noun} {sid}.", "{text}"),
    ],
    "sid_to_category": [
        ("What category is {sid} in?", "{category}"),
        ("Which categories does the {noun} {sid} belong to?", "{category}"),
        ("Classify {sid}.", "{category}"),
    ],
    "category_to_sid": [
        ("Suggest a {label} {noun}.", "{sid}"),
        ('Name one {noun} from the category "{label}".', "{sid}"),
        ("I want something in {label}. Which {noun}?", "{sid}"),
    ],
    "prefix_to_category": [
        ("What kind of {nouns} have semantic IDs starting with {prefix}?", "Mostly {labels}."),
        ("Items under the SID prefix {prefix} are mainly in which categories?", "{labels}"),
        ("Describe the group of {nouns} whose IDs begin with {prefix}.", "Mostly {labels}."),
    ],
    "similar_items": [
        ("Which {nouns} are similar to {sid}?", "{sids}"),
        ('Recommend {nouns} like "{title}" ({sid}).', "{sids}"),
        ("Find {nouns} close to {sid}.", "{sids}"),
    ],
    "seq_last": [
        ("A user's last {n} {nouns} were: {history}. What comes next?", "{sid}"),
        ("Here is what I {verb} recently, oldest first: {history}. Predict my next {noun}.", "{sid}"),
        ("History: {history}\nNext item:", "{sid}"),
    ],
    "copurchase_forward": [
        ("{People} who {verb} {sid} also {verb} which {noun}?", "{answer}"),
        ("I {verb} {sid}. What else might I like?", "{answer}"),
        ('{People} who {verb} "{title}" ({sid}) might also want which {noun}?', "{answer}"),
    ],
    "copurchase_backward": [
        ("Before {verb_ing} {sid}, what did {people} usually pick?", "{answer}"),
        ("Which {noun} do {people} choose right before {sid}?", "{answer}"),
        ('What often leads up to "{title}" ({sid})?', "{answer}"),
    ],
    # the recommender asks the first phrasing and continues the list (eval.rec_prompt); {listing}
    # is the SIDs back to back, no separator (5 tokens an item with two levels, not 7)
    "seq_history": [
        ("Here are the {nouns} a user {verb}, oldest first. Continue the list.", "{listing}"),
        ("List the {nouns} one user {verb}, in order.", "{listing}"),
        ("Write out one user's {noun} history, oldest first.", "{listing}"),
    ],
    # rec prompts always end with <|rec|>; templates 1 and 2 show the history, 0 does not
    "rec_steering": [
        ("{prefs} {rec}", "{sid}"),
        ("{prefs} Recently I {verb}: {history}. {rec}", "{sid}"),
        ("I {verb} {history}. {prefs} What should I try next? {rec}", "{sid}"),
    ],
}
TEMPLATES["pair_in_common"] = [
    ('Why do people who liked "{title}" ({sid}) also like "{title_b}" ({sid_b})?', "{answer}"),
    ("What do {sid} and {sid_b} have in common?", "{answer}"),
    ('How are "{title}" and "{title_b}" alike?', "{answer}"),
]
TEMPLATES["bundle_name"] = [
    ("Give a short, catchy name for a bundle of these {nouns}: {history}.", "{answer}"),
    ("Name a collection made of {history}.", "{answer}"),
    ("What would you call a set of these {nouns}: {history}?", "{answer}"),
]
REC_WITH_HISTORY = {1, 2}
PREFERENCES = [
    "I like {labels} {nouns}{brand}.",
    "I'm in the mood for {labels} {nouns}{brand}.",
    "Looking for {labels} {nouns}{brand}.",
    "My favourite {nouns} are {labels} ones{brand}.",
]


def templates_of(task: str) -> list[tuple[str, str]]:
    return TEMPLATES["seq_last" if task.startswith("seq_last_") or task == SESSION else task]


@dataclass(frozen=True)
class Words:
    """Catalog words for the phrasings: "movie" / "watched" for MovieLens, else products."""

    noun: str
    nouns: str
    verb: str
    verb_ing: str
    people: str
    category_sep: str  # MovieLens genres are a set ("Comedy, Drama"); Amazon categories a path


def words_for(source: str, item_noun: str = "") -> Words:
    if source == "movielens":
        w = Words("movie", "movies", "watched", "watching", "viewers", ", ")
    else:
        w = Words("product", "products", "bought", "buying", "customers", " > ")
    if item_noun:
        w = Words(item_noun, item_noun + "s", w.verb, w.verb_ing, w.people, w.category_sep)
    return w
