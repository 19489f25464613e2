"""Everyday English from templates: numbers, money, dates, times, commands, questions, chat.

Books and dictionaries rarely say "set a timer for twenty minutes" or "my number is five
five five two one eight". ``everyday_texts(n, seed)`` generates ``n`` distinct sentences of
that kind, deterministically, already in the normaliser's spoken form (numbers spelled
out as a TTS engine reads them), so transcripts and audio agree.
"""

from __future__ import annotations

import random

from emformer_variants.data.text import MAX_WORDS, MIN_WORDS
from emformer_variants.text_norm import normalize_text, number_to_words

VERSION = "everyday-v1"

_NAMES = ("anna ben carlos diana emma frank grace henry isabel jack kate liam maria noah olivia "
          "peter rachel sam tina victor wendy zoe ahmed priya chen yuki omar fatima lucas sofia "
          "david sarah michael laura james emily robert julia daniel nina").split()
_CITIES = ("london paris boston chicago denver seattle dublin madrid berlin toronto sydney "
           "atlanta houston miami phoenix portland glasgow leeds manchester vienna oslo lisbon "
           "austin dallas detroit montreal vancouver edinburgh bristol oxford").split()
_WEEKDAYS = "monday tuesday wednesday thursday friday saturday sunday".split()
_MONTHS = ("january february march april may june july august september october november "
           "december").split()
_ROOMS = ["kitchen", "bedroom", "living room", "bathroom", "hallway", "garage", "office",
          "basement", "dining room", "spare room"]
_ITEMS = ["umbrella", "phone charger", "car keys", "blue jacket", "coffee mug", "laptop", "wallet",
          "train ticket", "library book", "red scarf", "passport", "headphones", "water bottle",
          "sunglasses", "notebook", "tennis racket", "birthday card", "toolbox", "backpack", "guitar"]
_GROCERIES = ["milk", "eggs", "bread", "butter", "apples", "bananas", "rice", "pasta", "cheese",
              "tomatoes", "onions", "coffee", "tea", "orange juice", "chicken", "yogurt", "carrots",
              "potatoes", "olive oil", "flour", "sugar", "cereal", "peanut butter", "lettuce"]
_PLACES = ["pharmacy", "post office", "train station", "bus stop", "bank", "library", "supermarket",
           "hospital", "museum", "airport", "gym", "bakery", "hotel", "police station", "cinema",
           "swimming pool", "gas station", "dentist", "city hall", "park"]
_GENRES = ["jazz", "classical", "rock", "country", "reggae", "folk", "piano", "dance", "blues", "soul"]
_TASKS = ["call the dentist", "water the plants", "pick up the kids", "pay the electricity bill",
          "buy a birthday present", "book a table for dinner", "take out the rubbish",
          "return the library books", "feed the cat", "send the report", "renew my passport",
          "check the tyre pressure", "charge my phone", "take my medicine", "lock the back door"]
_WHENS = ["tomorrow morning", "this evening", "in an hour", "after lunch", "tonight",
          "on {weekday}", "next {weekday}", "at {time}", "before the meeting", "in {n} minutes"]
_WEATHER = ["sunny", "cloudy", "rainy", "windy", "foggy", "cold", "warm", "humid", "stormy", "mild"]
_UNITS = [("minute", "minutes"), ("hour", "hours"), ("day", "days"), ("week", "weeks"),
          ("mile", "miles"), ("kilometre", "kilometres"), ("pound", "pounds"),
          ("page", "pages"), ("ticket", "tickets"), ("box", "boxes")]
_ORDINALS = ["first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth", "ninth",
             "tenth", "eleventh", "twelfth", "thirteenth", "fourteenth", "fifteenth", "sixteenth",
             "seventeenth", "eighteenth", "nineteenth", "twentieth", "twenty first", "twenty second",
             "twenty third", "twenty fourth", "twenty fifth", "twenty sixth", "twenty seventh",
             "twenty eighth", "twenty ninth", "thirtieth", "thirty first"]

_TEMPLATES = [
    # numbers and money
    "the total comes to {money}", "i paid {money} for the {item}", "it costs {money} a month",
    "can you lend me {money} until {weekday}", "there are {n} {plural} left in the box",
    "we need {n} more chairs for the party", "the bill for {n} people was {money}",
    "my flat is on the {ordinal} floor", "she finished in {ordinal} place",
    "the score was {small} to {small} at half time", "the population is about {big}",
    "the car has done {big} miles", "prices went up by {small} percent last year",
    # dates and times
    "my appointment is on {weekday} the {ordinal} of {month}", "the meeting moved to {month} {ordinal}",
    "she was born in {year}", "the house was built in {year}", "we moved here in {month} {year}",
    "the train to {city} leaves at {time}", "wake me up at {time} tomorrow",
    "let's meet at {time} on {weekday}", "the shop closes at {time} on {weekday}",
    "dinner will be ready at {time}", "the film starts at {time}", "i'll see you on {weekday}",
    "the deadline is the {ordinal} of {month}", "school starts again on {weekday} the {ordinal}",
    # commands
    "turn off the lights in the {room}", "turn on the heating in the {room}",
    "set a timer for {n} minutes", "set an alarm for {time}", "call {name} on the mobile",
    "play some {genre} music in the {room}", "remind me to {task} {when}",
    "send a message to {name} saying i'm on my way", "add {grocery} to my shopping list",
    "add {grocery} and {grocery2} to the list", "read me my messages from {name}",
    "navigate to the nearest {place}", "turn the volume down a little",
    "cancel my alarm for {weekday}", "text {name} that i'll be {n} minutes late",
    # questions
    "what time does the {place} open on {weekday}", "how far is it to the {place}",
    "where did you put the {item}", "what's the weather like in {city} tomorrow",
    "is there a {place} near here", "who is coming to dinner on {weekday}",
    "how much is a return ticket to {city}", "do you know where {name} left the {item}",
    "what day is the {ordinal} of {month}", "how long does it take to get to {city}",
    "can you help me carry these {plural}", "did {name} call while i was out",
    "have you seen my {item} anywhere", "when does the next bus to the {place} leave",
    "could you tell me the way to the {place}", "what did {name} say about {weekday}",
    # phone numbers, codes, travel, weather
    "my number is {digits}", "the code for the door is {digits4}", "your order number is {digits}",
    "flight {flight} to {city} is delayed by {n} minutes", "the gate has changed to gate {small}",
    "it will be {weather} tomorrow with a high of {small} degrees",
    "expect {weather} weather in {city} over the weekend",
    "the parcel should arrive on {weekday} between {time} and {time2}",
    "platform {small} for the {time} service to {city}",
    # conversation
    "sorry i'm running about {n} minutes late", "thanks for your help with the {item}",
    "could you speak a little more slowly please", "i think i left my {item} at {name}'s house",
    "we should leave by {time} to beat the traffic", "i'll pick up {grocery} on the way home",
    "{name} and {name2} are meeting us at the {place}", "it took us {n} hours to drive to {city}",
    "i'm sorry but i didn't catch your name", "let me check my calendar for {weekday}",
    "can we move our call to {time}", "{name} says the {place} is closed on {weekday}",
]


def _time(rng: random.Random) -> str:
    hour = rng.randint(1, 12)
    minute = rng.choice([0, 0, 5, 10, 15, 20, 30, 30, 40, 45, 50])
    h = number_to_words(hour)
    style = rng.random()
    if minute == 0:
        text = f"{h} o'clock" if style < 0.5 else h
    elif minute == 30 and style < 0.4:
        text = f"half past {h}"
    elif minute == 15 and style < 0.4:
        text = f"quarter past {h}"
    elif minute == 45 and style < 0.4:
        text = f"quarter to {number_to_words(hour % 12 + 1)}"
    elif minute < 10:
        text = f"{h} oh {number_to_words(minute)}"
    else:
        text = f"{h} {number_to_words(minute)}"
    return text + rng.choice(["", "", " in the morning", " in the evening", " at night", " in the afternoon"])


def _year(rng: random.Random) -> str:
    """Read as people say years: "nineteen eighty five", "two thousand four", "nineteen oh six"."""
    y = rng.randint(1890, 2035)
    century, rest = divmod(y, 100)
    if 2000 <= y <= 2009:
        return number_to_words(y)
    if rest == 0:
        return f"{number_to_words(century)} hundred"
    if rest < 10:
        return f"{number_to_words(century)} oh {number_to_words(rest)}"
    return f"{number_to_words(century)} {number_to_words(rest)}"


def _money(rng: random.Random) -> str:
    whole = rng.choice([rng.randint(1, 20), rng.randint(1, 100), rng.randint(100, 2000)])
    unit = rng.choice(["dollars", "pounds", "euros"])
    cents = rng.choice([0, 0, 50, 99, 25, rng.randint(1, 99)])
    text = f"{number_to_words(whole)} {unit if whole != 1 else unit[:-1]}"
    if cents:
        text += f" and {number_to_words(cents)} " + ("cents" if unit != "pounds" else "pence")
    return text


def _digits(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(["oh", "zero"]) if d == 0 else number_to_words(d)
                    for d in (rng.randint(0, 9) for _ in range(n)))


def _fill(template: str, rng: random.Random) -> str:
    unit = rng.choice(_UNITS)
    names = rng.sample(_NAMES, 2)
    groceries = rng.sample(_GROCERIES, 2)
    values = {
        "money": _money(rng), "item": rng.choice(_ITEMS), "n": number_to_words(rng.randint(2, 60)),
        "plural": unit[1], "ordinal": rng.choice(_ORDINALS), "small": number_to_words(rng.randint(0, 40)),
        "big": number_to_words(rng.choice([rng.randint(1000, 99999), rng.randint(100, 999) * 1000])),
        "weekday": rng.choice(_WEEKDAYS), "month": rng.choice(_MONTHS), "year": _year(rng),
        "city": rng.choice(_CITIES), "time": _time(rng), "time2": _time(rng), "room": rng.choice(_ROOMS),
        "name": names[0], "name2": names[1], "genre": rng.choice(_GENRES), "task": rng.choice(_TASKS),
        "grocery": groceries[0], "grocery2": groceries[1], "place": rng.choice(_PLACES),
        "digits": _digits(rng, rng.choice([7, 10, 11])), "digits4": _digits(rng, 4),
        "flight": f"{rng.choice(['b a', 'u a', 'a a', 'k l'])} {number_to_words(rng.randint(10, 999))}",
        "weather": rng.choice(_WEATHER),
    }
    when = rng.choice(_WHENS).format(weekday=values["weekday"], time=values["time"], n=values["n"])
    return template.format(when=when, **values)


def everyday_texts(n: int, seed: int = 0) -> list[str]:
    """``n`` distinct everyday sentences (normalised, MIN_WORDS..MAX_WORDS words), deterministic."""
    rng = random.Random(f"{VERSION}-{seed}")
    out: list[str] = []
    seen: set[str] = set()
    attempts = 0
    while len(out) < n and attempts < 50 * n + 1000:
        attempts += 1
        text = normalize_text(_fill(rng.choice(_TEMPLATES), rng))
        if MIN_WORDS <= len(text.split()) <= MAX_WORDS and text not in seen:
            seen.add(text)
            out.append(text)
    return out
