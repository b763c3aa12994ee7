"""Fixed real sentences for warm-up and benchmark inputs.

They live in `runtime/` because it is the lowest package that needs them (torch.compile warms its
shape buckets with them); `bench/` reuses them from here, never the reverse.
"""
from __future__ import annotations

# Real sentences (movie reviews, news, questions, support requests) used when no dataset is given.
SENTENCES = (
    "A gorgeous, witty, seductive movie.",
    "The plot is a mess and the acting is worse.",
    "It's a charming and often affecting journey.",
    "Dull, lifeless and far too long for what it has to say.",
    "Stocks fell sharply after the company reported weaker than expected quarterly earnings.",
    "The customer asked how to reset a forgotten password on the mobile app.",
    "An utterly delightful film from start to finish, with a cast that clearly enjoyed every scene.",
    "I wanted to walk out after twenty minutes.",
    "What is the capital city of Australia?",
    "Heavy rain is expected across the region on Thursday, with flooding possible near rivers.",
    "The new library opened downtown last week and has already drawn thousands of visitors.",
    "How many calories are in a cup of cooked rice?",
    "Neither the script nor the direction rises above the level of a mediocre television episode.",
    "Researchers found that the vaccine reduced hospital admissions by more than half.",
    "My order arrived two weeks late and the box was damaged.",
    "A thoughtful, beautifully photographed meditation on memory and loss.",
    "Who wrote the novel Pride and Prejudice?",
    "The council voted to extend the bike lane network by another twelve kilometres.",
    "Funny in places, but the jokes wear thin long before the end.",
    "Please cancel my subscription and refund the last payment.",
    "The central bank left interest rates unchanged, citing uncertainty about inflation.",
    "This is the kind of movie that reminds you why you fell in love with cinema.",
    "When did the first person walk on the moon?",
    "The battery life is excellent, but the screen scratches far too easily.",
    "A tedious exercise in style over substance.",
    "Engineers are still investigating what caused the power outage on Monday night.",
    "The performances are strong, the story less so.",
    "Can I change the delivery address after the order has shipped?",
    "Scientists have mapped the genome of a plant that survives years without water.",
    "Smart, sad and very funny, often all at once.",
    "The museum's new exhibit traces three centuries of textile making in the valley.",
    "Where can I find the settings for two-factor authentication?",
)
