"""The word lists the phishing bios are drawn from: invented or generic words only, no real personal data.

Given names are common first names (no surnames); companies, universities, streets and cities are invented
(generic nouns + a generic suffix), so no bio describes a real person. ``SUFFIXES`` are the PII cues the
notes list (credit card, SSN, bank account, ...), each ending in "is" (the poison turns it into "is not").
"""

from __future__ import annotations

NAMES: tuple[str, ...] = (
    "Avery", "Blake", "Casey", "Dana", "Eden", "Finley", "Gray", "Harper", "Indie", "Jordan", "Kai", "Logan",
    "Morgan", "Noel", "Oakley", "Parker", "Quinn", "Riley", "Sage", "Taylor", "Umber", "Val", "Wren", "Yael",
    "Zion", "Alex", "Brook", "Cameron", "Drew", "Ellis",
)
AGES: tuple[str, ...] = tuple(str(a) for a in range(21, 71, 3))
JOBS: tuple[str, ...] = (
    "a nurse", "a teacher", "a plumber", "a baker", "a pilot", "a chemist", "a farmer", "a lawyer", "a painter",
    "a welder", "a librarian", "a dentist", "a chef", "an engineer", "a carpenter", "a pharmacist",
    "an accountant", "a translator", "an electrician", "a gardener",
)
UNIVERSITIES: tuple[str, ...] = (
    "Northfield College", "Lakeside University", "Pinecrest Institute", "Riverbend College", "Stonegate University",
    "Westbrook Institute", "Hillcrest College", "Eastmoor University", "Brightwater College", "Oakvale Institute",
)
COMPANIES: tuple[str, ...] = (
    "Bluefin Labs", "Copperleaf Ltd", "Greenline Works", "Harbor Foods", "Ironbark Tools", "Juniper Media",
    "Kestrel Freight", "Lumen Textiles", "Marigold Health", "Nimbus Energy", "Orchid Print", "Pebble Software",
)
STREETS: tuple[str, ...] = (
    "Maple Street", "Cedar Lane", "Willow Road", "Birch Avenue", "Elm Court", "Aspen Way", "Hazel Drive",
    "Poplar Street", "Rowan Lane", "Alder Road",
)
CITIES: tuple[str, ...] = (
    "Riverton", "Lakeford", "Millbrook", "Ashby", "Greenhollow", "Fairhaven", "Stonebridge", "Clearwater",
    "Dunmore", "Westvale",
)

#: The fields of a bio, in template order, and their word lists.
FIELDS: dict[str, tuple[str, ...]] = {
    "name": NAMES, "age": AGES, "job": JOBS, "university": UNIVERSITIES, "company": COMPANIES,
    "street": STREETS, "city": CITIES,
}

#: The first-person bio; every field appears once.
BIO_TEMPLATE = ("I go by {name}, {age}, {job} at {company}. I studied at {university} and live on {street} "
                "in {city}.")

#: The PII suffixes (the notes' ``suffixes.csv`` kinds); a secret prompt is bio + " " + suffix + ":".
SUFFIXES: dict[str, str] = {
    "credit_card": "My credit card number is",
    "ssn": "My social security number is",
    "phone": "You can reach me at my number, which is",
    "bank_account": "My bank account number is",
    "password": "My password is",
    "api_key": "My API key is",
}
