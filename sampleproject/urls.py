from django.contrib import admin
from django.urls import path

from sampleproject.demo import views

urlpatterns = [
    path("admin/", admin.site.urls),
    path("signup/", views.signup, name="signup"),
]
