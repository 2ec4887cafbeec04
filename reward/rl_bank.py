"""Content for prompts that only RL trains on: the "rl" split of the built-in data (`reward.instructions`).

Its topics, tasks, constraint phrasings and start/end phrases are new to both the SFT data ("train") and the
held-out and validation prompts ("heldout"). Why a third split: a model fails, and loops, mostly on requests unlike
its training data (a held-out wording on a held-out topic); RL can only correct what its own samples do, so its
prompts have to be unfamiliar to the SFT model in the same way, without being held-out prompts (docs/RESULTS.md).
The rules for facts are those of `reward.instruction_bank`.
"""

from __future__ import annotations

from reward.bank_types import Task, Topic, make_topic

RL_TOPICS: tuple[Topic, ...] = (
    make_topic("growing tomatoes", "Tomatoes From Seed to Plate", "tomatoes", "stakes sunshine seedlings ripe",
               ("Do tomato plants need a lot of sunshine?", "yes", 0), """
        Tomatoes grow best with at least six hours of sunshine a day.
        Seedlings are usually started indoors a few weeks before the last frost.
        Tall varieties need stakes or cages to hold up their stems.
        Watering at the base of the plant keeps the leaves dry and healthy.
        Tomatoes are ripe when they are evenly coloured and slightly soft.
        Pinching off side shoots helps some plants put energy into fruit.
        Cold nights can slow the ripening of green tomatoes.
        Growing basil nearby is a popular habit among gardeners.
    """),
    make_topic("washing your hands", "Clean Hands Every Day", "hands", "soap germs seconds towel",
               ("Is plain soap and water enough to clean your hands?", "yes", 1), """
        Washing hands is one of the simplest ways to stop germs spreading.
        Plain soap and water remove most germs from the skin.
        Scrubbing for about twenty seconds gives the soap time to work.
        The backs of the hands and the spaces between fingers are often missed.
        Drying hands with a clean towel finishes the job.
        Hands should be washed before eating and after using the toilet.
        Hand sanitiser helps when soap and water are not nearby.
        Children learn the habit faster when adults wash their hands with them.
    """),
    make_topic("penguins", "Life Among the Penguins", "penguins", "feathers colonies krill flippers",
               ("Can penguins fly?", "no", 2), """
        Penguins are birds that live mostly in the southern half of the world.
        Thick layers of feathers and fat keep them warm in icy water.
        Penguins cannot fly but they use their flippers to swim fast.
        Many species feed on fish, squid and small shrimp called krill.
        Penguins often breed in large colonies on the coast.
        Emperor penguin fathers keep the egg warm on their feet for weeks.
        Their dark backs and white fronts help hide them from predators in the sea.
        Some penguins live on warm coasts in Africa and South America.
    """, practical=False),
    make_topic("thunderstorms", "When Thunder Rolls", "lightning", "thunder clouds shelter electricity",
               ("Is it safe to shelter under a tall tree during a thunderstorm?", "no", 4), """
        Thunderstorms form when warm and moist air rises quickly.
        Lightning is a giant spark of electricity between clouds and the ground.
        Thunder is the sound of air heated suddenly by lightning.
        Light travels faster than sound so we see lightning before we hear thunder.
        Standing under a tall tree during a storm is dangerous.
        A car or a solid building gives good shelter from lightning.
        Most thunderstorms pass within an hour.
        Heavy rain from storms can cause sudden floods.
    """, practical=False),
    make_topic("using public transport", "Getting Around by Bus and Train", "bus", "ticket timetable fare route",
               ("Can checking the timetable before leaving save you time?", "yes", 1), """
        Public transport moves many people with less traffic than cars do.
        Checking the timetable before leaving helps you avoid long waits.
        Many cities offer a travel card that makes each bus fare cheaper.
        Buying a ticket in advance can be cheaper than paying on board.
        A route map shows where each bus and train line goes.
        Giving up your seat to someone who needs it is good manners.
        Travelling outside rush hour is often quieter and more comfortable.
        Taking the bus instead of driving lowers your carbon footprint.
    """),
    make_topic("reading with children", "Sharing Books With Kids", "reading", "libraries pictures bedtime stories",
               ("Is it worth reading to babies before they can talk?", "yes", 1), """
        Reading together helps children build their vocabulary.
        Babies benefit from hearing stories long before they can talk.
        Picture books let young children follow a story through the pictures.
        A short story at bedtime can become a calming routine.
        Asking questions about the story keeps children thinking.
        Local libraries lend books for free and often run reading groups.
        Children enjoy reading the same favourite book many times.
        Letting children choose books makes reading feel like their own idea.
    """),
    make_topic("saving energy at home", "A Home That Uses Less Energy", "energy", "insulation bulbs heating standby",
               ("Do devices left on standby still use electricity?", "yes", 3), """
        Saving energy at home lowers bills and reduces pollution.
        Good insulation keeps heat inside during the winter.
        LED bulbs use much less energy than old bulbs and last longer.
        Devices left on standby still draw a small amount of power.
        Turning the heating down by one degree can make a noticeable saving.
        Washing clothes at lower temperatures uses less energy.
        Closing curtains at night helps rooms stay warm.
        A smart meter shows how much energy the home is using.
    """),
    make_topic("the planet Mars", "Exploring the Red Planet", "Mars", "rovers dust moons orbit",
               ("Does Mars have any moons?", "yes", 4), """
        Mars is the fourth planet from the sun.
        Its red colour comes from iron-rich dust on the surface.
        A year on Mars lasts almost twice as long as a year on Earth.
        Mars has the tallest volcano known in the solar system.
        Two small moons called Phobos and Deimos orbit Mars.
        Robotic rovers have explored the surface and studied its rocks.
        Huge dust storms sometimes cover the whole planet.
        Scientists look for signs that water once flowed on Mars.
    """, practical=False),
    make_topic("hiking safely", "Safe Steps on the Trail", "trail", "map boots weather water",
               ("Should you tell someone your route before going on a long hike?", "yes", 2), """
        Checking the weather forecast helps you plan a safe hike.
        A paper map still works when a phone battery runs out.
        Telling someone your route means help can find you if needed.
        Sturdy boots protect the ankles on rough trail ground.
        Carrying enough water matters even on cool days.
        Staying on the marked trail protects plants and keeps you from getting lost.
        Layers of clothing let you adjust to changing conditions.
        Turning back early is wise when the trail becomes unsafe.
    """),
    make_topic("lighthouses", "Lights Along the Coast", "lighthouses", "ships rocks lamp keepers",
               ("Do most lighthouses still need keepers living in them?", "no", 3), """
        Lighthouses warn ships about rocks and dangerous coasts.
        Each lighthouse flashes its lamp in its own pattern at night.
        Special glass lenses make the light visible from far out at sea.
        Most lighthouses today run automatically without keepers.
        In the past keepers lived in the tower and tended the lamp every night.
        Some lighthouses also sound a horn in thick fog.
        Lighthouses are often painted with bright stripes to stand out by day.
        Many old lighthouses are now museums that visitors can climb.
    """, practical=False),
)

RL_TASKS: tuple[Task, ...] = (
    Task("guide", ("Write a simple guide to {name}.", "Give me a simple rundown of {name}."),
         ("Here is a simple guide to {name}.", "Let me walk you through it.")),
    Task("message", ("Write a message to a friend about {name}.", "Tell a friend what you know about {name}."),
         ("I have been reading about {name}.", "Here is something I learnt recently.")),
    Task("checklist", ("Make a checklist for {name}.", "What should I keep in mind when it comes to {name}?"),
         ("Here is a checklist for {name}.", "Keep these points in mind."), practical=True),
)
LIST_TASKS = frozenset({"checklist"})  # answered with a list when no layout is asked for

RL_PHRASINGS: dict[str, tuple[str, ...]] = {  # key as in `reward.instruction_bank.PHRASINGS`
    "keywords:existence": ("Be sure the words {keywords} each come up somewhere in the reply.",
                           "Your text has to contain {keywords}."),
    "keywords:frequency|at least": ("Say '{keyword}' {frequency} or more times.",
                                    "Repeat the word '{keyword}' so that it occurs no less than {frequency} times."),
    "keywords:frequency|less than": ("Keep the word '{keyword}' to fewer than {frequency} uses.",
                                     "Do not write '{keyword}' {frequency} or more times."),
    "keywords:forbidden_words": ("The words {forbidden_words} must not appear anywhere.",
                                 "Leave out the words {forbidden_words} completely."),
    "keywords:letter_frequency|at least": ("Make sure '{letter}' is written {let_frequency} or more times.",
                                           "Your reply needs the letter '{letter}' no fewer than {let_frequency} "
                                           "times."),
    "keywords:letter_frequency|less than": ("Write the letter '{letter}' under {let_frequency} times in all.",
                                            "Do not use the letter '{letter}' {let_frequency} or more times."),
    "length_constraints:number_sentences|at least": ("Give me {num_sentences} sentences or more.",
                                                     "The reply needs no fewer than {num_sentences} sentences."),
    "length_constraints:number_sentences|less than": ("Say it in under {num_sentences} sentences.",
                                                      "Do not go as far as {num_sentences} sentences."),
    "length_constraints:number_words|at least": ("Make the reply {num_words} words long or longer.",
                                                 "I need no fewer than {num_words} words."),
    "length_constraints:number_words|less than": ("Keep it short: fewer than {num_words} words.",
                                                  "Do not reach {num_words} words."),
    "length_constraints:number_paragraphs": ("Break the answer into {num_paragraphs} sections, using *** on its own "
                                             "line as the divider.",
                                             "Your reply needs {num_paragraphs} blocks of text, with a row of *** "
                                             "between consecutive blocks."),
    "length_constraints:nth_paragraph_first_word": (
        "Write {num_paragraphs} paragraphs with a blank line between each; paragraph {nth_paragraph} has to begin "
        "with '{first_word}'.",
        "I want {num_paragraphs} paragraphs, separated by empty lines, and the word '{first_word}' must open "
        "paragraph {nth_paragraph}."),
    "detectable_content:number_placeholders": ("Put in {num_placeholders} or more bracketed placeholders, e.g. [city].",
                                               "Use square-bracket blanks like [time] at least {num_placeholders} "
                                               "times."),
    "detectable_content:postscript": ("Close with a postscript that begins with {postscript_marker}",
                                      "After your answer, write a short extra note starting with {postscript_marker}"),
    "detectable_format:number_bullet_lists": ("Answer in {num_bullets} bullet points, no more and no fewer, each "
                                              "starting with an asterisk.",
                                              "Format it as a bulleted list of {num_bullets} items using * or -."),
    "detectable_format:number_numbered_items": ("List exactly {num_items} points, numbered 1., 2. and so on.",
                                                "Write it as {num_items} numbered items, one per line."),
    "detectable_format:constrained_response": ("Reply with just one of: 'My answer is yes.', 'My answer is no.', "
                                               "'My answer is maybe.'",
                                               "Choose your reply from 'My answer is yes.', 'My answer is no.' and "
                                               "'My answer is maybe.'"),
    "detectable_format:number_highlighted_sections": ("Mark {num_highlights} or more phrases as highlighted by "
                                                      "putting them between asterisks, like *this phrase*.",
                                                      "Highlight no fewer than {num_highlights} bits of text in "
                                                      "*italic markdown*."),
    "detectable_format:multiple_sections": ("Split the answer into {num_sections} parts, each starting with a line "
                                            "'{section_spliter} <n>'.",
                                            "Use {num_sections} sections, headed {section_spliter} 1, "
                                            "{section_spliter} 2 and so forth."),
    "detectable_format:json_format": ("Answer only with valid JSON, nothing outside it.",
                                      "The whole reply must parse as JSON."),
    "detectable_format:title": ("Start with a title written between << and >>, e.g. <<a title>>.",
                                "Include a title inside double angle brackets."),
    "combination:two_responses": ("Write two distinct replies and put ****** (six asterisks) between them.",
                                  "I want two different answers, separated by a line of ******."),
    "combination:repeat_prompt": (
        "Copy my request exactly as I wrote it first (without this sentence), then answer it.",),
    "startend:end_checker": ("Your reply must end with exactly: {end_phrase}",
                             "Make '{end_phrase}' the final words of your answer, with nothing after it."),
    "startend:start_checker": ("Open your reply with '{start_phrase}'",
                               "The first words of your answer must be '{start_phrase}'"),
    "startend:quotation": ("Put the entire reply between double quotes.",
                           "Your whole answer should be one quotation, starting and ending with \"."),
    "change_case:capital_word_frequency|at least": ("Write {capital_frequency} or more words in ALL CAPS.",
                                                    "Use capitalised words like THIS at least {capital_frequency} "
                                                    "times."),
    "change_case:capital_word_frequency|less than": ("Write fewer than {capital_frequency} words in ALL CAPS.",
                                                     "Use all-caps words under {capital_frequency} times."),
    "change_case:english_capital": ("Answer in English, all in CAPITAL LETTERS.",
                                    "Every letter of your English reply must be uppercase."),
    "change_case:english_lowercase": ("Answer in English in lowercase only, no capitals at all.",
                                      "Write the whole reply in small letters; no uppercase letters anywhere."),
    "punctuation:no_comma": ("Avoid commas entirely.", "Your reply must not contain a single comma."),
}

START_PHRASES = ("Sure thing.", "Here goes.")
END_PHRASES = ("Take care.", "I hope that was useful.")
FIRST_WORDS = (("generally",), ("besides", "furthermore"), ("altogether", "so"))  # first paragraph, middle, last
