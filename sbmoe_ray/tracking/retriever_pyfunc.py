"""The MLflow pyfunc of an exported SB-MoE retriever, logged as a model from code: MLflow stores this file
with the model, so ``mlflow.pyfunc.load_model(uri)`` needs mlflow and sentence-transformers, not sbmoe-ray.
``predict`` takes texts (a list, a Series, or a DataFrame's first column) and returns their embeddings
(queries and documents alike: SB-MoE shares everything between them)."""

import mlflow
from mlflow.pyfunc import PythonModel


class SBMoERetriever(PythonModel):
    def load_context(self, context):
        from sentence_transformers import SentenceTransformer

        self.model = SentenceTransformer(context.artifacts["model"], trust_remote_code=True, device="cpu")

    def predict(self, context, model_input: list[str], params=None) -> list[list[float]]:
        # the hint is MLflow's signature and input validation: a list, a Series or a one-column DataFrame of
        # strings arrives here as a list of strings
        if hasattr(model_input, "iloc"):
            model_input = model_input.iloc[:, 0] if model_input.ndim == 2 else model_input
        return self.model.encode([str(t) for t in model_input], convert_to_numpy=True).tolist()


mlflow.models.set_model(SBMoERetriever())
