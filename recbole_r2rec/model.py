from recbole.model.abstract_recommender import SequentialRecommender
class R2Rec(SequentialRecommender):
    pass
