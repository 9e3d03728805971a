"""What the features mean: vocabularies of phrases, image–text encoders, and the scores that
name a feature by the phrases its most-activating images share."""
