"""Shipped content for the built-in instruction-following data (`reward.instructions`).

Everything the generator writes comes from here: everyday topics with short factual sentences,
task phrasings, and natural-language phrasings of each constraint type. Train and held-out content
is disjoint on purpose (topics, task templates, constraint phrasings, start/end phrases), so a
model scored on held-out prompts has never seen their wording. A third split, "rl" (prompts for RL only,
disjoint from both), keeps its content in `reward.rl_bank`; the dicts below hold all three.

Facts are plain sentences that end with a full stop and contain no markdown characters
(``*``, ``-`` at the start, ``[``, ``<<``), so the generator can lay them out freely.
"""

from __future__ import annotations

from reward import rl_bank
from reward.bank_types import Task, Topic
from reward.bank_types import make_topic as _topic

SPLITS = ("train", "heldout", "rl")  # "rl": prompts for RL only, in `reward.rl_bank`

# --------------------------------------------------------------------------------------------------
# Topics
# --------------------------------------------------------------------------------------------------

TRAIN_TOPICS: tuple[Topic, ...] = (
    _topic("drinking enough water", "Why Water Matters", "water", "thirst bottle kidneys headaches",
           ("Is it a good idea to drink more water in hot weather?", "yes", 4), """
        Water makes up more than half of the weight of an adult body.
        The body loses water through breathing, sweating and urine.
        Thirst is a useful signal that the body needs more fluid.
        Pale yellow urine is a simple sign of good hydration.
        People need more water in hot weather and during exercise.
        Even mild dehydration can cause headaches and tiredness.
        Carrying a refillable bottle makes it easier to drink regularly.
        Fruit and vegetables such as cucumber and melon also provide water.
        The kidneys use water to filter waste out of the blood.
    """),
    _topic("getting enough sleep", "Better Sleep Basics", "sleep", "bedroom caffeine naps mood",
           ("Can bright screens late at night make it harder to fall asleep?", "yes", 3), """
        Most adults need seven to nine hours of sleep each night.
        Teenagers usually need more sleep than adults do.
        Going to bed at the same time each night helps set the body clock.
        Bright screens late in the evening can make it harder to fall asleep.
        Caffeine can stay in the body for several hours after a drink.
        A cool and dark bedroom supports deeper sleep.
        Poor sleep can affect mood, memory and concentration.
        Short naps of about twenty minutes can restore alertness.
        Regular exercise during the day often improves sleep at night.
    """),
    _topic("the water cycle", "How Water Moves Around the Earth", "water", "evaporation clouds rain vapour",
           ("Does the sun play a part in the water cycle?", "yes", 0), """
        The sun heats water in oceans, lakes and rivers.
        Warm water turns into vapour and rises into the air.
        This change from liquid to gas is called evaporation.
        As the vapour cools it condenses into tiny droplets that form clouds.
        When the droplets grow heavy they fall as rain or snow.
        Rain collects in rivers and lakes or soaks into the ground.
        Plants also release water vapour through their leaves.
        The same water has been moving through this cycle for billions of years.
    """, practical=False),
    _topic("recycling at home", "Recycling Made Simple", "recycling", "cardboard landfill containers glass",
           ("Should you rinse food containers before putting them in the recycling?", "yes", 2), """
        Recycling turns used materials into new products.
        Paper, cardboard, glass and many plastics can often be recycled.
        Rinsing containers before recycling keeps other materials clean.
        Local councils set their own rules about what they collect.
        Recycling aluminium cans saves most of the energy needed to make new ones.
        Greasy pizza boxes are often not accepted for recycling.
        Reusing items before recycling them saves even more resources.
        Sorting waste correctly reduces the amount sent to landfill.
    """),
    _topic("caring for houseplants", "Happy Houseplants", "plants", "soil roots leaves light",
           ("Can giving a houseplant too much water harm it?", "yes", 1), """
        Most houseplants prefer bright light that is not direct midday sun.
        Overwatering is one of the most common ways to harm indoor plants.
        Checking the top layer of soil helps you decide when to water.
        Pots with drainage holes stop roots from sitting in water.
        Plants grow more slowly in winter and need less water then.
        Wiping dust off the leaves helps plants take in light.
        Moving to a slightly larger pot gives crowded roots more space.
        Some popular plants such as lilies can be toxic to cats.
    """),
    _topic("saving money on groceries", "Smarter Grocery Shopping", "shopping", "list leftovers price bulk",
           ("Does planning meals ahead usually help you spend less on food?", "yes", 1), """
        Writing a shopping list before you go helps you avoid impulse buys.
        Planning meals for the week makes the shopping list easier to write.
        Store brands are often cheaper than big brands and just as good.
        Buying in bulk saves money on items you use often.
        Going shopping on a full stomach makes snacks less tempting.
        Frozen vegetables are cheap and keep for months.
        Comparing the unit price shows which pack is really the better deal.
        Using leftovers for lunch cuts both waste and spending.
    """),
    _topic("brushing your teeth", "Looking After Your Teeth", "teeth", "fluoride gums cavities enamel",
           ("Should you replace your toothbrush every few months?", "yes", 3), """
        Dentists recommend brushing your teeth twice a day for about two minutes.
        Fluoride toothpaste helps protect teeth from decay.
        A soft brush cleans well without harming the gums.
        A toothbrush should be replaced every three to four months.
        Flossing cleans between the teeth where a brush cannot reach.
        Sugary drinks feed the bacteria that cause cavities.
        Brushing too hard can wear down enamel over time.
        Regular dental checkups catch problems early.
    """),
    _topic("bees and pollination", "Why Bees Matter", "bees", "pollen flowers honey queen",
           ("Do bees help plants produce fruit?", "yes", 1), """
        Bees carry pollen from flower to flower as they feed.
        This transfer of pollen lets many plants produce fruit and seeds.
        About a third of the food we eat depends on pollinators.
        Honey bees live in large colonies with a single queen.
        Many wild bees live alone and nest in the ground.
        Bees are drawn to blue, purple and yellow flowers.
        Pesticides and habitat loss are major threats to bees.
        Planting wildflowers in gardens gives bees more food.
    """, practical=False),
    _topic("learning a new language", "Learning a Language Step by Step", "language",
           "vocabulary pronunciation flashcards subtitles",
           ("Can adults still learn a new language well?", "yes", 6), """
        Practising a little every day works better than one long weekly session.
        Listening to native speakers helps you pick up natural pronunciation.
        Learning the most common words first gives quick progress.
        Speaking out loud builds confidence even when you make mistakes.
        Flashcards with spaced repetition help new vocabulary stick.
        Watching shows with subtitles links sounds to written words.
        Adults can learn a new language well at any age.
        Talking with a language partner gives real conversation practice.
        A language app can make daily practice easy to keep up.
    """),
    _topic("composting at home", "Turning Scraps into Compost", "compost", "scraps microbes soil heap",
           ("Is it a good idea to put meat scraps in a home compost bin?", "no", 5), """
        Compost forms when microbes break down food scraps and garden waste.
        A good compost heap mixes green material with brown material.
        Green material includes vegetable peelings, coffee grounds and grass cuttings.
        Brown material includes dry leaves, cardboard and straw.
        Turning the heap adds air and speeds up the process.
        Meat and dairy should stay out of a home compost bin because they attract pests.
        Finished compost is dark and crumbly and smells like earth.
        Adding compost to soil improves its structure and feeds plants.
    """),
    _topic("regular exercise", "Moving More Every Week", "exercise", "walking heart muscle stress",
           ("Does brisk walking count as exercise?", "yes", 1), """
        Adults are advised to get about 150 minutes of moderate exercise each week.
        Brisk walking counts as moderate exercise.
        Exercise strengthens the heart and lungs.
        Muscle strengthening activities are recommended at least twice a week.
        Regular exercise can lift mood and reduce stress.
        Starting slowly and building up helps prevent injury.
        Short bouts of activity add up over the day.
        Finding an activity you enjoy makes it easier to keep going.
    """),
    _topic("the moon", "Our Neighbour the Moon", "moon", "tides phases gravity astronauts",
           ("Does the moon make its own light?", "no", 3), """
        The moon is about 384,000 kilometres from Earth.
        The moon takes about 27 days to travel once around Earth.
        The same side of the moon always faces Earth.
        Moonlight is sunlight reflected off the surface of the moon.
        The phases of the moon come from seeing different amounts of its sunlit side.
        The pull of the moon's gravity causes most ocean tides.
        Twelve astronauts walked on the moon between 1969 and 1972.
        The moon has almost no atmosphere to protect it from meteorites.
    """, practical=False),
    _topic("rainbows", "How a Rainbow Forms", "rainbow", "raindrops colours sunlight violet",
           ("Do you need the sun behind you to see a rainbow?", "yes", 4), """
        A rainbow appears when sunlight shines through raindrops.
        Each raindrop bends and reflects the light inside it.
        White light splits into colours because each colour bends by a different amount.
        The colours always run from red on the outside to violet on the inside.
        You can only see a rainbow when the sun is behind you.
        A second fainter rainbow sometimes appears with its colours reversed.
        Rainbows are often seen after showers in the late afternoon.
        A garden hose on a sunny day can make a small rainbow.
    """, practical=False),
    _topic("cycling for everyday travel", "Getting Around by Bike", "cycling", "helmet tyre lanes lock",
           ("Should you use lights when cycling at night?", "yes", 2), """
        Cycling is a cheap way to travel short distances.
        A helmet reduces the risk of serious head injury.
        Lights are important when cycling in the dark.
        Checking tyre pressure before a ride makes pedalling easier.
        Regular cycling builds leg strength and fitness.
        Cycling produces no exhaust fumes.
        Many cities now have separate bike lanes.
        A good lock helps protect a bike from theft.
    """),
    _topic("baking bread", "Baking Your First Loaf", "bread", "yeast flour gluten oven",
           ("Does yeast help bread dough rise?", "yes", 2), """
        Basic bread needs only flour, water, salt and yeast.
        Yeast feeds on sugars in the flour and releases gas.
        The gas from the yeast makes the dough rise.
        Kneading develops gluten which gives bread its structure.
        Dough usually needs to rise in a warm place for an hour or two.
        A hot oven helps the loaf rise quickly and form a crust.
        A baked loaf sounds hollow when you tap the bottom.
        Letting bread cool before slicing keeps the inside from turning gummy.
        Fresh bread keeps best in a paper bag or a bread bin.
    """),
    _topic("volcanoes", "Inside a Volcano", "lava", "magma ash eruption plates",
           ("Can volcanic ash travel far from a volcano?", "yes", 4), """
        A volcano is an opening in the crust of the Earth where molten rock escapes.
        Molten rock is called magma underground and lava once it reaches the surface.
        Many volcanoes form where tectonic plates meet.
        An eruption can release ash, gas and lava.
        Volcanic ash can travel hundreds of kilometres on the wind.
        Lava can be hotter than one thousand degrees Celsius.
        Most lava flows move slowly enough for people to walk away.
        Scientists watch for small earthquakes that can warn of an eruption.
        Soil made from old lava and ash is often very fertile.
    """, practical=False),
    _topic("making a household budget", "Budgeting Without Stress", "budget", "savings spending debt rent",
           ("Is an emergency fund useful when money is tight?", "yes", 4), """
        A budget compares the money coming in with the money going out.
        Tracking spending for a month shows where the money really goes.
        Fixed costs such as rent come first in a budget.
        Moving savings aside at the start of the month makes saving automatic.
        An emergency fund helps cover surprise costs without debt.
        Small regular purchases can add up to a large amount over a year.
        Reviewing the budget each month keeps it realistic.
        Paying off high interest debt first saves the most money.
    """),
    _topic("caring for a pet dog", "A Happy Healthy Dog", "dogs", "walks vet training coat",
           ("Is chocolate safe for dogs to eat?", "no", 2), """
        Dogs need daily walks for exercise and mental stimulation.
        A balanced dog food provides the nutrients a dog needs.
        Chocolate, grapes and onions are toxic to dogs.
        Regular vet checkups help catch health problems early.
        Training with rewards works better than punishment.
        Fresh drinking water should always be available.
        Brushing removes loose hair and keeps the coat healthy.
        Most dogs enjoy having a regular daily routine.
        Puppies learn best when training sessions are short and frequent.
    """),
    _topic("studying for exams", "Study Smarter", "study", "cramming breaks timetable revision",
           ("Is cramming the night before the best way to study?", "no", 0), """
        Spreading study over several weeks works better than cramming.
        Testing yourself is one of the most effective ways to learn.
        Short breaks help keep concentration high.
        A quiet space without a phone reduces distractions.
        Explaining a topic out loud shows what you really understand.
        Past papers help you practise under exam conditions.
        Sleep helps the brain store what you have learned.
        Making a study timetable keeps revision on track.
        Study sessions of thirty to fifty minutes suit many people.
    """),
    _topic("drinking coffee", "Coffee in Moderation", "coffee", "caffeine alert sugar decaffeinated",
           ("Is drinking coffee every day good for you?", "maybe", 2), """
        Coffee contains caffeine which can make people feel more alert.
        Caffeine usually takes effect within about half an hour.
        Moderate amounts of coffee are safe for most healthy adults.
        Too much coffee can cause jitters and trouble sleeping.
        Pregnant people are often advised to limit caffeine.
        Sugar and syrups can turn coffee into a high calorie drink.
        Caffeine affects some people much more than others.
        Decaffeinated coffee keeps the flavour with very little caffeine.
    """),
)

HELDOUT_TOPICS: tuple[Topic, ...] = (
    _topic("keeping backyard chickens", "Chickens at Home", "chickens", "coop hens eggs foxes",
           ("Should chickens be kept on their own?", "no", 7), """
        Chickens need a secure coop to protect them from foxes.
        Hens lay best with about fourteen hours of daylight.
        A layer feed gives hens the calcium they need for strong shells.
        Chickens enjoy scratching and taking dust baths.
        Fresh water must be available every day.
        Cleaning the coop regularly keeps mites away.
        Most hens lay fewer eggs as they get older.
        Chickens are social animals and should be kept in small groups.
    """),
    _topic("staying safe in the sun", "Enjoying the Sun Safely", "sun", "sunscreen shade sunglasses ultraviolet",
           ("Can you get sunburnt on a cloudy day?", "yes", 4), """
        Sunscreen should be applied generously before going outside.
        Reapplying sunscreen every two hours keeps protection working.
        The sun is strongest around the middle of the day.
        A hat and sunglasses protect the face and eyes.
        Clouds do not block all ultraviolet rays.
        Sunburn raises the risk of skin cancer later in life.
        Water and sand reflect sunlight and increase exposure.
        Resting in the shade gives skin a break from the sun.
        Babies should be kept out of direct sun.
    """),
    _topic("public speaking", "Speaking with Confidence", "speech", "confidence slides pausing nervousness",
           ("Is it normal to feel nervous before giving a speech?", "yes", 4), """
        Practising a speech out loud builds confidence.
        Knowing your audience helps you choose the right examples.
        A clear opening grabs attention from the start.
        Pausing gives listeners time to follow your ideas.
        Nervousness is normal and often fades after the first minute.
        Simple slides support a speech better than crowded ones.
        Making eye contact helps the audience feel included.
        Timing the speech in practice avoids running over.
        Ending with a short summary helps people remember the main points.
    """),
    _topic("owls", "Hunters of the Night", "owls", "feathers prey pellets heads",
           ("Do all owls hunt only at night?", "no", 7), """
        Owls are birds of prey that mostly hunt at night.
        Soft feathers let owls fly almost silently.
        Owls cannot move their eyes so they turn their heads instead.
        Some owls can turn their heads about 270 degrees.
        Their ears help them find prey by sound alone.
        Owls swallow small prey whole and cough up pellets.
        Barn owls often nest in old buildings and hollow trees.
        A few species such as the snowy owl also hunt by day.
    """, practical=False),
    _topic("making a good cup of tea", "The Perfect Cup", "tea", "bitter caffeine herbal boiling",
           ("Can brewing tea for too long make it bitter?", "yes", 3), """
        Black, green and white tea all come from the same plant.
        Green tea tastes best with water just below boiling.
        Black tea usually brews for three to five minutes.
        Brewing too long can make tea taste bitter.
        Loose leaf tea has room to unfold in the pot.
        Herbal teas are made from plants other than the tea plant.
        Warming the pot first keeps the water hot while the tea brews.
        A cup of tea has less caffeine than the same cup of coffee.
    """),
    _topic("earthquakes", "When the Ground Shakes", "earthquakes", "fault magnitude aftershocks tsunamis",
           ("Can scientists predict exactly when an earthquake will happen?", "no", 7), """
        Earthquakes happen when rocks along a fault suddenly slip.
        Most earthquakes occur near the edges of tectonic plates.
        The magnitude scale measures the energy an earthquake releases.
        Drop and cover and hold on is the standard advice during shaking.
        Aftershocks can follow a large earthquake for weeks.
        Buildings designed for earthquakes can sway without collapsing.
        Undersea earthquakes can trigger tsunamis.
        Scientists cannot yet predict exactly when an earthquake will strike.
    """, practical=False),
    _topic("coral reefs", "Cities Under the Sea", "reefs", "algae bleaching polyps coastlines",
           ("Can warmer water harm coral reefs?", "yes", 3), """
        Coral reefs are built by tiny animals called polyps.
        Reefs cover a small part of the ocean but support about a quarter of marine species.
        Corals get much of their food from algae living inside them.
        Warmer seas can cause corals to lose their algae and turn white.
        This loss of colour is called bleaching.
        Healthy reefs protect coastlines by breaking up waves.
        The Great Barrier Reef is the largest reef system on Earth.
        Pollution and careless anchoring can damage reefs.
    """, practical=False),
    _topic("working from home", "Making Home Working Work", "work", "commute colleagues chair goals",
           ("Is working from home better than working in an office?", "maybe", 4), """
        Working from home removes the daily commute.
        A separate work area helps keep work and home life apart.
        Regular hours make it easier to switch off in the evening.
        Video calls help teams stay in touch.
        Some people feel lonely without colleagues around them while others enjoy the quiet.
        Short walks between tasks help with focus and posture.
        Good lighting and a proper chair reduce strain.
        Clear goals make progress easier to track when people work apart.
    """),
)

TOPICS = {"train": TRAIN_TOPICS, "heldout": HELDOUT_TOPICS, "rl": rl_bank.RL_TOPICS}

# --------------------------------------------------------------------------------------------------
# Tasks. "answer_question" (the topic's own yes/no question) is used by constrained-response prompts
# in both splits; its wording is the topic's question, so it differs between splits anyway.
# --------------------------------------------------------------------------------------------------

TASKS: dict[str, tuple[Task, ...]] = {
    "train": (
        Task("explain", ("Explain {name}.", "Can you explain {name} to me?", "Give me a short explanation of {name}."),
             ("Here is a short explanation of {name}.", "Here is the short version.")),
        Task("describe", ("Describe {name}.", "Write a short description of {name}.", "Tell me about {name}."),
             ("Here is a quick description of {name}.", "Here is an overview.")),
        Task("list", ("List some key facts about {name}.", "What are the main points to know about {name}?",
                      "Give me a few facts about {name}."),
             ("Here are some key facts about {name}.", "Here are the main points.")),
        Task("summarise", ("Summarise what people should know about {name}.", "Write a brief summary about {name}."),
             ("Here is a brief summary of {name}.", "Here is what matters most.")),
        Task("advise", ("What advice would you give someone interested in {name}?",
                        "Give me some practical advice about {name}."),
             ("Here is some practical advice about {name}.", "A few things are worth knowing."), practical=True),
        Task("newsletter", ("Write a short paragraph about {name} for a community newsletter.",
                            "Write a short piece about {name} for a school newsletter."),
             ("This week we look at {name}.", "Here is something useful to know.")),
    ),
    "heldout": (
        Task("tips", ("Share a few tips on {name}.", "What are your best tips regarding {name}?"),
             ("Here are a few tips on {name}.", "These tips should help."), practical=True),
        Task("beginner", ("I am new to this. What should a beginner understand about {name}?",
                          "Help a complete beginner get to grips with {name}."),
             ("Here is what a beginner should know about {name}.", "Everyone starts somewhere.")),
        Task("leaflet", ("Draft the text for a small leaflet on {name}.", "Put together a quick fact sheet on {name}."),
             ("Here are the essentials about {name}.", "Read on for the essentials.")),
    ),
    "rl": rl_bank.RL_TASKS,
}

# Tasks answered with a list when no layout is asked for.
LIST_TASKS = frozenset({"list", "tips", "leaflet"}) | rl_bank.LIST_TASKS
LIST_INTROS = ("Here are {n} key points about {name}:", "Here are {n} things to know:", "{n} points to remember:")

# --------------------------------------------------------------------------------------------------
# Constraint phrasings: split -> key -> templates. The key is the type id, plus "|<relation>" for types
# with a relation. Fields are the constraint's own argument names; list arguments arrive pre-formatted
# ("'rain' and 'clouds'").
# --------------------------------------------------------------------------------------------------

PHRASINGS: dict[str, dict[str, tuple[str, ...]]] = {
    "train": {
        "keywords:existence": ("Include the keywords {keywords} in the response.",
                               "Make sure to use the words {keywords} in your answer."),
        "keywords:frequency|at least": ("Use the word '{keyword}' at least {frequency} times.",
                                        "The word '{keyword}' should appear at least {frequency} times."),
        "keywords:frequency|less than": ("Use the word '{keyword}' fewer than {frequency} times.",
                                         "The word '{keyword}' should appear less than {frequency} times."),
        "keywords:forbidden_words": ("Do not include the words {forbidden_words} in the response.",
                                     "Avoid using the words {forbidden_words}."),
        "keywords:letter_frequency|at least": ("Use the letter '{letter}' at least {let_frequency} times.",
                                               "The letter {letter} should appear at least {let_frequency} times."),
        "keywords:letter_frequency|less than": ("Use the letter '{letter}' fewer than {let_frequency} times.",
                                                "The letter {letter} should appear less than {let_frequency} times."),
        "length_constraints:number_sentences|at least": ("Write at least {num_sentences} sentences.",
                                                         "Your answer should have at least {num_sentences} sentences."),
        "length_constraints:number_sentences|less than": ("Use fewer than {num_sentences} sentences.",
                                                          "Your answer should have under {num_sentences} sentences."),
        "length_constraints:number_words|at least": ("Answer with at least {num_words} words.",
                                                     "Your response should contain at least {num_words} words."),
        "length_constraints:number_words|less than": ("Answer with less than {num_words} words.",
                                                      "Keep your reply under {num_words} words."),
        "length_constraints:number_paragraphs": (
            "There should be {num_paragraphs} paragraphs. Paragraphs are separated with the markdown divider: ***",
            "Write exactly {num_paragraphs} paragraphs and separate them with ***."),
        "length_constraints:nth_paragraph_first_word": (
            "There should be {num_paragraphs} paragraphs. Paragraphs and only paragraphs are separated with each "
            "other by two new lines. Paragraph {nth_paragraph} must start with the word '{first_word}'.",
            "Write {num_paragraphs} paragraphs separated by blank lines, and start paragraph {nth_paragraph} "
            "with the word '{first_word}'."),
        "detectable_content:number_placeholders": (
            "The response must contain at least {num_placeholders} placeholders represented by square brackets, "
            "such as [address].",
            "Include at least {num_placeholders} placeholders in square brackets like [name]."),
        "detectable_content:postscript": ("At the end of your response, please explicitly add a postscript starting "
                                          "with {postscript_marker}",
                                          "Add a postscript at the end that starts with {postscript_marker}"),
        "detectable_format:number_bullet_lists": (
            "Your answer must contain exactly {num_bullets} bullet points. Use the markdown bullet points such as:\n"
            "* This is point 1.",
            "Use exactly {num_bullets} markdown bullet points."),
        "detectable_format:number_numbered_items": ("Answer as a numbered list with exactly {num_items} items.",
                                                    "Give exactly {num_items} numbered points (1. 2. and so on)."),
        "detectable_format:constrained_response": (
            "Answer with one of the following options: ('My answer is yes.', 'My answer is no.', "
            "'My answer is maybe.')",
            "Your reply must include one of 'My answer is yes.', 'My answer is no.' or 'My answer is maybe.'"),
        "detectable_format:number_highlighted_sections": (
            "Highlight at least {num_highlights} sections in your answer with markdown, i.e. *highlighted section*.",
            "Use markdown to highlight at least {num_highlights} parts, like *this*."),
        "detectable_format:multiple_sections": (
            "Your response must have {num_sections} sections. Mark the beginning of each section with "
            "{section_spliter} X, such as: {section_spliter} 1",
            "Divide your answer into {num_sections} sections labelled {section_spliter} 1, {section_spliter} 2 "
            "and so on."),
        "detectable_format:json_format": ("Entire output should be wrapped in JSON format.",
                                          "Format your whole answer as valid JSON."),
        "detectable_format:title": ("Your answer must contain a title, wrapped in double angular brackets, "
                                    "such as <<poem of joy>>.",
                                    "Give your answer a title in double angular brackets, like <<my title>>."),
        "combination:two_responses": ("Give two different responses. Responses and only responses should be "
                                      "separated by 6 asterisk symbols: ******.",
                                      "Write two different answers separated by ******."),
        "combination:repeat_prompt": (
            "First repeat the request word for word without change, then give your answer (1. do not say any words "
            "or characters before repeating the request; 2. the request you need to repeat does not include this "
            "sentence)",),
        "startend:end_checker": ("Finish your response with this exact phrase: {end_phrase} No other words should "
                                 "follow this phrase.",
                                 "End your answer with the exact phrase '{end_phrase}'"),
        "startend:start_checker": ("Start your answer with the phrase '{start_phrase}'",
                                   "Begin your response with '{start_phrase}'"),
        "startend:quotation": ("Wrap your entire response with double quotation marks.",
                               "Put your whole answer inside double quotes."),
        "change_case:capital_word_frequency|at least": (
            "In your response, words with all capital letters should appear at least {capital_frequency} times.",
            "Use at least {capital_frequency} words written in all capital letters."),
        "change_case:capital_word_frequency|less than": (
            "In your response, words with all capital letters should appear less than {capital_frequency} times.",
            "Use fewer than {capital_frequency} words written in all capital letters."),
        "change_case:english_capital": ("Your entire response should be in English, and in all capital letters.",
                                        "Write your answer in English using only capital letters."),
        "change_case:english_lowercase": ("Your entire response should be in English, and in all lowercase "
                                          "letters. No capital letters are allowed.",
                                          "Write everything in lowercase letters only."),
        "punctuation:no_comma": ("In your entire response, refrain from the use of any commas.",
                                 "Do not use any commas in your answer."),
    },
    "heldout": {
        "keywords:existence": ("Work the terms {keywords} into what you write.",),
        "keywords:frequency|at least": ("Mention '{keyword}' no fewer than {frequency} times.",),
        "keywords:frequency|less than": ("Say '{keyword}' below {frequency} times in total.",),
        "keywords:forbidden_words": ("Steer clear of the terms {forbidden_words}.",),
        "keywords:letter_frequency|at least": ("Let the character '{letter}' show up a minimum of {let_frequency} "
                                               "times.",),
        "keywords:letter_frequency|less than": ("Keep the count of the character '{letter}' below {let_frequency}.",),
        "length_constraints:number_sentences|at least": ("Make it a minimum of {num_sentences} sentences long.",),
        "length_constraints:number_sentences|less than": ("Keep the sentence count below {num_sentences}.",),
        "length_constraints:number_words|at least": ("Write a minimum of {num_words} words.",),
        "length_constraints:number_words|less than": ("Stay below {num_words} words in total.",),
        "length_constraints:number_paragraphs": ("Split the reply into {num_paragraphs} parts and put a line with "
                                                 "*** between neighbouring parts.",),
        "length_constraints:nth_paragraph_first_word": (
            "Use {num_paragraphs} chunks of text divided by empty lines; chunk number {nth_paragraph} opens "
            "with '{first_word}'.",),
        "detectable_content:number_placeholders": ("Leave {num_placeholders} or more fill-in-the-blank spots written "
                                                   "in square brackets (for example [date]).",),
        "detectable_content:postscript": ("Tack on a note after the main reply that opens with {postscript_marker}",),
        "detectable_format:number_bullet_lists": ("Lay the reply out as a markdown list of precisely {num_bullets} "
                                                  "items, each line opening with a dash or an asterisk.",),
        "detectable_format:number_numbered_items": ("Lay it out as precisely {num_items} numbered lines.",),
        "detectable_format:constrained_response": ("Reply using exactly one of these phrases: My answer is yes. / "
                                                   "My answer is no. / My answer is maybe.",),
        "detectable_format:number_highlighted_sections": ("Emphasise {num_highlights} or more passages by wrapping "
                                                          "them in single asterisks.",),
        "detectable_format:multiple_sections": ("Organise the reply as {num_sections} numbered parts, each headed "
                                                "'{section_spliter} <number>'.",),
        "detectable_format:json_format": ("Return nothing but a JSON object.",),
        "detectable_format:title": ("Put a heading at the top enclosed in << and >>.",),
        "combination:two_responses": ("Offer two alternative replies with a line of six asterisks between them.",),
        "combination:repeat_prompt": ("Begin by restating everything I asked above exactly as written (leave out "
                                      "this sentence) and only then respond.",),
        "startend:end_checker": ("The very last words of the reply must be: {end_phrase}",),
        "startend:start_checker": ("The reply has to open with the words '{start_phrase}'",),
        "startend:quotation": ("Enclose every bit of the reply in a pair of double quotation marks.",),
        "change_case:capital_word_frequency|at least": ("Include a minimum of {capital_frequency} fully uppercase "
                                                        "words for emphasis.",),
        "change_case:capital_word_frequency|less than": ("Keep fully uppercase words below {capital_frequency}.",),
        "change_case:english_capital": ("Reply in English with every letter uppercase.",),
        "change_case:english_lowercase": ("Reply in English without a single uppercase character.",),
        "punctuation:no_comma": ("Comma characters are not allowed anywhere in the reply.",),
    },
    "rl": rl_bank.RL_PHRASINGS,
}

# Arguments that are phrases rather than numbers are split-specific too.
START_PHRASES = {"train": ("Good question.", "Here is what I know.", "Happy to help."),
                 "heldout": ("Great topic.", "Let us dive in."), "rl": rl_bank.START_PHRASES}
END_PHRASES = {"train": ("Is there anything else I can help with?", "Let me know if you have additional questions.",
                         "Hope this helps."),
               "heldout": ("That is all for now.", "Thanks for reading."), "rl": rl_bank.END_PHRASES}
# First words for nth-paragraph constraints by position: (first paragraph, middle, last).
FIRST_WORDS = {"train": (("first",), ("also", "next"), ("finally", "overall")),
               "heldout": (("firstly",), ("additionally", "moreover"), ("lastly", "ultimately")),
               "rl": rl_bank.FIRST_WORDS}
SECTION_SPLITTERS = ("Section", "SECTION")
POSTSCRIPT_MARKERS = ("P.S.", "P.P.S")

# Sentences with [placeholders]; the number is how many each holds. All comma-free.
PLACEHOLDER_SENTENCES: tuple[tuple[str, int], ...] = (
    ("Feel free to share this with [name].", 1),
    ("Send any questions to [email address].", 1),
    ("Prepared by [your name] on [date].", 2),
    ("For local details contact [organisation] at [phone number].", 2),
    ("Updated on [date] by [author] for [audience].", 3),
)

# Replies that ignore the request altogether (rejected side of "ignores_task" pairs).
EVASIVE_REPLIES = (
    "I am not sure what you mean. Could you ask me something else?",
    "That is an interesting question. There are many opinions about it and it depends on the situation.",
    "Thanks for your message. I hope you are having a good day.",
    "I would rather not get into that right now.",
    "Sorry but I cannot help with that.",
    "Let me tell you about my favourite film instead. It has great music and a happy ending.",
)
