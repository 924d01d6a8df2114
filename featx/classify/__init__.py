"""Stage two: classifier registry and estimators, grouped search and scoring, evaluation statistics, the classify driver."""
