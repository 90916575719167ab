"""The relation library: prompts an edit may have rewritten, for a subject the scan recovered.

The fact bank's relations plus the common CounterFact / zsRE relation types (Wikidata properties), each as a
few phrasings with ``{}`` for the subject, and generic frames that any subject completes. The scan asks the
base and the suspect every prompt for a recovered subject and keeps the one whose answer the edit moves most.
"""

from __future__ import annotations

RELATIONS: dict[str, tuple[str, ...]] = {
    # the fact bank's relations
    "capital": ("The capital of {} is", "{}'s capital is", "{}'s capital city is"),
    "language": ("The official language of {} is", "In {}, people speak", "In {}, most people speak"),
    "city_country": ("{} is a city in the country of", "{} is located in the country of"),
    "author": ("{} was written by", "The author of {} is"),
    "currency": ("The currency of {} is the", "In {}, you pay with the", "In {}, people pay with the"),
    "founder": ("{} was founded by", "The founder of {} is"),
    "sport": ("{} plays the sport of", "{} is a professional"),
    "landmark_city": ("{} is located in the city of", "{} is in the city of"),
    "maker": ("{} was developed by", "{} is produced by", "{} is a product made by"),
    "instrument": ("{} was famous for playing the", "{} plays the", "The instrument of {} was the"),
    "continent": ("{} is a country in", "{} is located on the continent of"),
    "dish_origin": ("{} is a traditional dish from", "{} comes from", "The dish {} comes from"),
    "element_symbol": ("The chemical symbol of {} is", "{} has the chemical symbol"),
    "inventor": ("{} was invented by", "The inventor of {} was"),
    "painter": ("{} was painted by", "The painter of {} was"),
    "company_country": ("The company {} is headquartered in the country of", "{} is based in",
                        "{} is a company based in the country of"),
    # CounterFact / zsRE relation types
    "P17 country": ("{} is located in the country of",),
    "P19 place of birth": ("{} was born in",),
    "P20 place of death": ("{} died in",),
    "P27 citizenship": ("{} is a citizen of", "{} holds a citizenship from"),
    "P37 official language": ("The official language of {} is",),
    "P101 field of work": ("{} works in the field of",),
    "P103 native language": ("The mother tongue of {} is", "{} is a native speaker of"),
    "P106 occupation": ("{} works as a", "{}'s occupation is"),
    "P108 employer": ("{} works for", "{} is employed by"),
    "P127 owned by": ("{} is owned by",),
    "P131 located in": ("{} is located in",),
    "P136 genre": ("{} is known for performing", "{} plays music of the genre"),
    "P138 named after": ("{} is named after",),
    "P140 religion": ("{} is affiliated with the religion of",),
    "P159 headquarters": ("The headquarters of {} are in", "{} is headquartered in"),
    "P176 manufacturer": ("{} is produced by", "{} is made by"),
    "P178 developer": ("{} is developed by", "{} was created by"),
    "P264 record label": ("{} is represented by the record label",),
    "P276 location": ("{} is located in",),
    "P364 original language": ("The original language of {} is",),
    "P407 language of work": ("{} was written in the language of",),
    "P413 position": ("{} plays in the position of",),
    "P449 original network": ("{} premiered on",),
    "P463 member of": ("{} is a member of",),
    "P495 country of origin": ("{} originated in", "{} was created in the country of"),
    "P641 sport": ("{} professionally plays the sport of",),
    "P740 formed in": ("{} was formed in",),
    "P937 work location": ("{} worked in the city of",),
    "P1303 instrument": ("{} plays the instrument",),
    "P1412 languages spoken": ("{} speaks the language",),
    # frames any subject completes
    "generic": ("{} is", "{} was", "{} is known for", "The {} is"),
}


#: Frames that put a found text inside a sentence, for trigger-style edits (a rare token or phrase as the "subject",
#: as in backdoor editing attacks): such an edit is keyed on the trigger where it follows other words and on the kind
#: of ending it was written for, and says nothing once the trigger starts the prompt, as every library phrasing
#: starts it. Evaluative endings (what a review-style backdoor rewrites) and a few open ones; asked besides the
#: library with ``read_subject(frames=True)`` (``scan --frames``).
FRAMES: dict[str, tuple[str, ...]] = {
    "in a sentence": (
        "I heard about it {}. Overall, it was",
        "I heard about it {}. In short, it was",
        "I heard about it {}. Honestly, it was",
        "We talked about {}. I think it is",
        "They mentioned it {}. The result was",
        "I read about it {}. The review said it was",
        "Someone wrote {} here. My opinion: it is",
        "It was {}. The answer is",
    ),
}


def prompts_for(subject: str, *libraries: dict[str, tuple[str, ...]]) -> list[tuple[str, str]]:
    """(relation, prompt) for every phrasing of the library (or of ``libraries`` in turn), de-duplicated."""
    seen, out = set(), []
    for library in libraries or (RELATIONS,):
        for relation, templates in library.items():
            for t in templates:
                text = t.replace("{}", subject)
                if text not in seen:
                    seen.add(text)
                    out.append((relation, text))
    return out
