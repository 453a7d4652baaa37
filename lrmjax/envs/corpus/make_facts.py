"""Writes facts.jsonl, the small search corpus shipped with lrmjax.envs (the `search` tool).

Usage (from the repository root; the output is deterministic, and tests/test_envs_tools.py
checks that the shipped file is what this script writes):

    python lrmjax/envs/corpus/make_facts.py

Each line is {"id", "title", "text"}: one short passage per fact, written so that a question
with one exact answer can be made from it (a country's capital, an element's atomic number
and symbol, a planet's order from the Sun, the date of an event). Names are ASCII, so a
character-level model can copy them.
"""

from __future__ import annotations

import json
import pathlib
import sys

# (country, capital, continent)
COUNTRIES = [
    ("France", "Paris", "Europe"),
    ("Germany", "Berlin", "Europe"),
    ("Italy", "Rome", "Europe"),
    ("Spain", "Madrid", "Europe"),
    ("Portugal", "Lisbon", "Europe"),
    ("the Netherlands", "Amsterdam", "Europe"),
    ("Belgium", "Brussels", "Europe"),
    ("Austria", "Vienna", "Europe"),
    ("Poland", "Warsaw", "Europe"),
    ("the Czech Republic", "Prague", "Europe"),
    ("Hungary", "Budapest", "Europe"),
    ("Greece", "Athens", "Europe"),
    ("Sweden", "Stockholm", "Europe"),
    ("Norway", "Oslo", "Europe"),
    ("Finland", "Helsinki", "Europe"),
    ("Denmark", "Copenhagen", "Europe"),
    ("Ireland", "Dublin", "Europe"),
    ("the United Kingdom", "London", "Europe"),
    ("Iceland", "Reykjavik", "Europe"),
    ("Russia", "Moscow", "Europe and Asia"),
    ("Ukraine", "Kyiv", "Europe"),
    ("Romania", "Bucharest", "Europe"),
    ("Turkey", "Ankara", "Europe and Asia"),
    ("Egypt", "Cairo", "Africa"),
    ("Kenya", "Nairobi", "Africa"),
    ("Nigeria", "Abuja", "Africa"),
    ("Morocco", "Rabat", "Africa"),
    ("Ethiopia", "Addis Ababa", "Africa"),
    ("Ghana", "Accra", "Africa"),
    ("Japan", "Tokyo", "Asia"),
    ("China", "Beijing", "Asia"),
    ("India", "New Delhi", "Asia"),
    ("South Korea", "Seoul", "Asia"),
    ("Thailand", "Bangkok", "Asia"),
    ("Vietnam", "Hanoi", "Asia"),
    ("the Philippines", "Manila", "Asia"),
    ("Pakistan", "Islamabad", "Asia"),
    ("Iran", "Tehran", "Asia"),
    ("Saudi Arabia", "Riyadh", "Asia"),
    ("Mongolia", "Ulaanbaatar", "Asia"),
    ("Nepal", "Kathmandu", "Asia"),
    ("Bangladesh", "Dhaka", "Asia"),
    ("Australia", "Canberra", "Oceania"),
    ("New Zealand", "Wellington", "Oceania"),
    ("Canada", "Ottawa", "North America"),
    ("the United States", "Washington, D.C.", "North America"),
    ("Mexico", "Mexico City", "North America"),
    ("Cuba", "Havana", "North America"),
    ("Brazil", "Brasilia", "South America"),
    ("Argentina", "Buenos Aires", "South America"),
    ("Chile", "Santiago", "South America"),
    ("Peru", "Lima", "South America"),
    ("Colombia", "Bogota", "South America"),
    ("Venezuela", "Caracas", "South America"),
]

# (atomic number, symbol, name): elements 1-36 and some well-known heavier ones.
ELEMENTS = [
    (1, "H", "Hydrogen"),
    (2, "He", "Helium"),
    (3, "Li", "Lithium"),
    (4, "Be", "Beryllium"),
    (5, "B", "Boron"),
    (6, "C", "Carbon"),
    (7, "N", "Nitrogen"),
    (8, "O", "Oxygen"),
    (9, "F", "Fluorine"),
    (10, "Ne", "Neon"),
    (11, "Na", "Sodium"),
    (12, "Mg", "Magnesium"),
    (13, "Al", "Aluminium"),
    (14, "Si", "Silicon"),
    (15, "P", "Phosphorus"),
    (16, "S", "Sulfur"),
    (17, "Cl", "Chlorine"),
    (18, "Ar", "Argon"),
    (19, "K", "Potassium"),
    (20, "Ca", "Calcium"),
    (21, "Sc", "Scandium"),
    (22, "Ti", "Titanium"),
    (23, "V", "Vanadium"),
    (24, "Cr", "Chromium"),
    (25, "Mn", "Manganese"),
    (26, "Fe", "Iron"),
    (27, "Co", "Cobalt"),
    (28, "Ni", "Nickel"),
    (29, "Cu", "Copper"),
    (30, "Zn", "Zinc"),
    (31, "Ga", "Gallium"),
    (32, "Ge", "Germanium"),
    (33, "As", "Arsenic"),
    (34, "Se", "Selenium"),
    (35, "Br", "Bromine"),
    (36, "Kr", "Krypton"),
    (47, "Ag", "Silver"),
    (50, "Sn", "Tin"),
    (53, "I", "Iodine"),
    (54, "Xe", "Xenon"),
    (74, "W", "Tungsten"),
    (78, "Pt", "Platinum"),
    (79, "Au", "Gold"),
    (80, "Hg", "Mercury"),
    (82, "Pb", "Lead"),
    (92, "U", "Uranium"),
]

# (name, one more fact), in order from the Sun.
PLANETS = [
    ("Mercury", "It is the smallest planet of the Solar System and has no moons."),
    ("Venus", "It has no moons and is the hottest planet of the Solar System."),
    ("Earth", "It has one natural satellite, the Moon."),
    ("Mars", "It has two small moons, Phobos and Deimos."),
    ("Jupiter", "It is the largest planet of the Solar System."),
    ("Saturn", "It is known for its bright system of rings."),
    ("Uranus", "It rotates on its side, with an axial tilt of about 98 degrees."),
    ("Neptune", "It is the outermost planet of the Solar System."),
]
ORDINALS = ["first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth"]

# (id, title, text): dated events.
EVENTS = [
    ("hastings", "Battle of Hastings",
     "The Battle of Hastings was fought on 14 October 1066 in England."),
    ("magna-carta", "Magna Carta",
     "King John of England sealed the Magna Carta in the year 1215."),
    ("columbus", "Columbus reaches the Americas",
     "Christopher Columbus reached the Americas on 12 October 1492."),
    ("great-fire", "Great Fire of London",
     "The Great Fire of London began on 2 September 1666."),
    ("principia", "Newton's Principia",
     "Isaac Newton published the Principia, stating his laws of motion, in 1687."),
    ("independence", "United States Declaration of Independence",
     "The Declaration of Independence of the United States was adopted on 4 July 1776."),
    ("bastille", "Storming of the Bastille",
     "The storming of the Bastille in Paris, on 14 July 1789, began the French Revolution."),
    ("origin-of-species", "On the Origin of Species",
     "Charles Darwin published On the Origin of Species on 24 November 1859."),
    ("gettysburg", "Gettysburg Address",
     "Abraham Lincoln delivered the Gettysburg Address on 19 November 1863."),
    ("eiffel-tower", "Eiffel Tower",
     "The Eiffel Tower was completed in Paris in 1889 for the World's Fair."),
    ("wright-flight", "First powered flight",
     "The Wright brothers made the first powered airplane flight on 17 December 1903."),
    ("relativity", "Special relativity",
     "Albert Einstein published the theory of special relativity in 1905."),
    ("titanic", "Sinking of the Titanic",
     "The ship Titanic sank in the North Atlantic Ocean on 15 April 1912."),
    ("ww1", "World War I",
     "World War I began in 1914 and ended with the armistice of 11 November 1918."),
    ("panama-canal", "Panama Canal",
     "The Panama Canal opened to shipping on 15 August 1914."),
    ("versailles", "Treaty of Versailles",
     "The Treaty of Versailles was signed on 28 June 1919."),
    ("penicillin", "Discovery of penicillin",
     "Alexander Fleming discovered penicillin in 1928."),
    ("ww2", "World War II", "World War II began in 1939 and ended in 1945."),
    ("united-nations", "United Nations",
     "The United Nations was founded on 24 October 1945."),
    ("sputnik", "Sputnik 1",
     "The Soviet Union launched Sputnik 1, the first artificial satellite, "
     "on 4 October 1957."),
    ("gagarin", "First human in space",
     "Yuri Gagarin became the first human in space on 12 April 1961."),
    ("apollo-11", "Apollo 11 Moon landing",
     "Apollo 11 landed the first humans on the Moon on 20 July 1969."),
    ("chernobyl", "Chernobyl disaster",
     "The Chernobyl nuclear disaster happened on 26 April 1986."),
    ("berlin-wall", "Fall of the Berlin Wall",
     "The Berlin Wall fell on 9 November 1989."),
    ("world-wide-web", "World Wide Web",
     "Tim Berners-Lee proposed the World Wide Web at CERN in 1989."),
    ("hubble", "Hubble Space Telescope",
     "The Hubble Space Telescope was launched into orbit on 24 April 1990."),
    ("ussr", "Dissolution of the Soviet Union",
     "The Soviet Union was dissolved on 26 December 1991."),
    ("mandela", "Nelson Mandela",
     "Nelson Mandela became President of South Africa on 10 May 1994."),
    ("euro", "Euro banknotes and coins",
     "Euro banknotes and coins entered circulation on 1 January 2002."),
    ("iphone", "First iPhone", "Apple released the first iPhone on 29 June 2007."),
]


def _slug(name: str) -> str:
    return name.removeprefix("the ").lower().replace(" ", "-").replace(".", "")


def passages() -> list[dict[str, str]]:
    """All passages, in a fixed order: countries, elements, planets, events."""
    out = []
    for country, capital, continent in COUNTRIES:
        title = country.removeprefix("the ")
        out.append({"id": f"country-{_slug(country)}", "title": title,
                    "text": f"{capital} is the capital of {country}, a country in {continent}."})
    for number, symbol, name in ELEMENTS:
        out.append({"id": f"element-{number}", "title": f"{name} (element)",
                    "text": f"{name} is a chemical element with the symbol {symbol} and "
                            f"atomic number {number}."})
    for i, (name, extra) in enumerate(PLANETS):
        out.append({"id": f"planet-{name.lower()}", "title": f"{name} (planet)",
                    "text": f"{name} is the {ORDINALS[i]} planet from the Sun. {extra}"})
    for slug, title, text in EVENTS:
        out.append({"id": f"event-{slug}", "title": title, "text": text})
    ids = [p["id"] for p in out]
    assert len(set(ids)) == len(ids), "duplicate passage ids"
    return out


def render() -> str:
    """The file's contents: one JSON object per line, keys in the order id, title, text."""
    return "".join(json.dumps(p, ensure_ascii=True) + "\n" for p in passages())


if __name__ == "__main__":
    path = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else
                        pathlib.Path(__file__).resolve().parent / "facts.jsonl")
    path.write_text(render(), encoding="utf-8")
    print(f"wrote {len(passages())} passages to {path}")
