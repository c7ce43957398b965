"""The learning loop: what people decide (stores), what to ask them next (queue), heads learned from their decisions
(heads, scope, market, finetune), new model versions made from them (retraining), their photos (collection), label
issues, and the background jobs that run the long steps (jobs). Nothing is imported here: each module is imported
by name."""
