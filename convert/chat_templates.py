"""Chat templates written into converted models whose upstream files carry none.

MobiLlama-Chat was trained with FastChat's "one_shot" conversation: a system line, one example
exchange, then `### Human:` / `### Assistant:` turns separated by "\\n### ". A reply ends where the
model starts the next "###" turn, so the converted model's generation_config lists "###" as a stop
string.
"""

FASTCHAT_SYSTEM = (
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions."
)

FASTCHAT_EXAMPLE = (
    ("Human", "Got any creative ideas for a 10 year old’s birthday?"),
    (
        "Assistant",
        "Of course! Here are some creative ideas for a 10-year-old's birthday party:\n"
        "1. Treasure Hunt: Organize a treasure hunt in your backyard or nearby park. Create clues and "
        "riddles for the kids to solve, leading them to hidden treasures and surprises.\n"
        "2. Science Party: Plan a science-themed party where kids can engage in fun and interactive "
        "experiments. You can set up different stations with activities like making slime, erupting "
        "volcanoes, or creating simple chemical reactions.\n"
        "3. Outdoor Movie Night: Set up a backyard movie night with a projector and a large screen or "
        "white sheet. Create a cozy seating area with blankets and pillows, and serve popcorn and "
        "snacks while the kids enjoy a favorite movie under the stars.\n"
        "4. DIY Crafts Party: Arrange a craft party where kids can unleash their creativity. Provide a "
        "variety of craft supplies like beads, paints, and fabrics, and let them create their own "
        "unique masterpieces to take home as party favors.\n"
        "5. Sports Olympics: Host a mini Olympics event with various sports and games. Set up "
        "different stations for activities like sack races, relay races, basketball shooting, and "
        "obstacle courses. Give out medals or certificates to the participants.\n"
        "6. Cooking Party: Have a cooking-themed party where the kids can prepare their own mini "
        "pizzas, cupcakes, or cookies. Provide toppings, frosting, and decorating supplies, and let "
        "them get hands-on in the kitchen.\n"
        "7. Superhero Training Camp: Create a superhero-themed party where the kids can engage in fun "
        "training activities. Set up an obstacle course, have them design their own superhero capes "
        "or masks, and organize superhero-themed games and challenges.\n"
        "8. Outdoor Adventure: Plan an outdoor adventure party at a local park or nature reserve. "
        "Arrange activities like hiking, nature scavenger hunts, or a picnic with games. Encourage "
        "exploration and appreciation for the outdoors.\n"
        "Remember to tailor the activities to the birthday child's interests and preferences. Have a "
        "great celebration!",
    ),
)


def _jinja_string(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n") + "'"


def _fastchat_one_shot() -> str:
    example = "".join(f"\n### {role}: {text}" for role, text in FASTCHAT_EXAMPLE)
    # A "system" message replaces the default system line; the example exchange stays.
    return (
        "{% if messages and messages[0]['role'] == 'system' %}"
        "{{ messages[0]['content'] }}{% set turns = messages[1:] %}"
        "{% else %}{{ " + _jinja_string(FASTCHAT_SYSTEM) + " }}{% set turns = messages %}{% endif %}"
        "{{ " + _jinja_string(example) + " }}"
        "{% for message in turns %}"
        "{% if message['role'] == 'user' %}{{ '\\n### Human: ' + message['content'] }}"
        "{% else %}{{ '\\n### Assistant: ' + message['content'] }}{% endif %}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ '\\n### Assistant:' }}{% endif %}"
    )


TEMPLATES = {
    "fastchat-one-shot": _fastchat_one_shot(),
}
STOP_STRINGS = {
    "fastchat-one-shot": ["###"],
}


def get_template(name: str) -> str:
    from mlxsmall.errors import MlxsmallError

    if name not in TEMPLATES:
        raise MlxsmallError(f"unknown chat template {name!r}; known: {', '.join(TEMPLATES)}")
    return TEMPLATES[name]
